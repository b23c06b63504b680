"""The epoch loop every causal-LM condition shares: data, teacher cache, student, resume, eval.

A condition supplies its objective (`Objective`: student, a typed `LMBatch` -> loss, parts).
The training step is `kdsweep.training`'s Stepper (as for text and speech); checkpoints, Tune
reporting and out-of-memory recovery are the shared ones in trainables/. The teacher's top-k
cache is built once by `prepare_lm` (the driver calls it before any trial) and memory-mapped by
every trial.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdsweep.errors import KDSweepError
from kdsweep.lm.cache import (
    PROMPTS,
    LMTeacher,
    TopKCache,
    greedy_continuations,
    seqkd_rows,
    teacher_entry,
    topk_cache,
)
from kdsweep.lm.data import first_blocks, load_corpus, load_documents
from kdsweep.lm.losses import kl_terms, topk_support
from kdsweep.lm.models import (
    build_student,
    count_parameters,
    is_shape,
    load_teacher_config,
    max_positions,
    resolve_teacher,
    same_tokenizer,
)
from kdsweep.paths import cache_root
from kdsweep.text.models import pick_device
from kdsweep.train_utils import batches, make_optimizer
from kdsweep.training import Precision, Stepper, optimizer_steps, set_threads
from trainables import tune_io
from trainables.checkpointing import resume_state, save_state
from trainables.lm.config import LMConfig, OnPolicyConfig, SeqKDConfig
from trainables.oom_guard import oom_metrics, recover_oom


@dataclass
class LMBatch:
    """One training batch as an objective receives it (on the device; S = block_size)."""

    inputs: torch.Tensor  # [B, S-1] token ids
    targets: torch.Tensor  # [B, S-1] the next tokens
    mask: torch.Tensor  # [B, S-1] bool: targets that count (seqkd: the teacher's tokens only)
    rng: np.random.Generator  # on_policy's coin, resumable per epoch
    logp: torch.Tensor | None = None  # [B, S-1, k] cached teacher top-k log-probs (fp16)
    idx: torch.Tensor | None = None  # [B, S-1, k] their token ids
    tail: torch.Tensor | None = None  # [B, S-1] teacher probability mass outside the top-k
    teacher: nn.Module | None = None  # the live teacher, when the config's needs.live_teacher


# objective(student, batch) -> (total loss, {component: value})
Objective = Callable[[nn.Module, LMBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
EVAL_BATCH = 16


@dataclass
class LMData:
    """What an LM trial reads: the blocks per split, the stored teacher and its top-k cache,
    and (seqkd) the teacher's continuations."""

    blocks: dict[str, torch.Tensor]
    teacher: LMTeacher
    teacher_hit: bool
    cache: TopKCache
    cache_hit: bool
    seqkd: np.ndarray | None = None


def prepare_lm(cfg: LMConfig, log: Callable[[str], None] = print) -> LMData:
    """Check the input, materialise the teacher once, pack the corpus, build the top-k cache
    (and seqkd continuations) once. Bad input fails before anything is written."""
    cache = cache_root(cfg.cache_dir)
    load_documents(cfg.dataset, cfg.text_column)  # an empty / unreadable corpus fails first
    ref = resolve_teacher(cfg.teacher)
    limit = max_positions(load_teacher_config(ref))
    longest = cfg.block_size
    if isinstance(cfg, SeqKDConfig | OnPolicyConfig):
        longest = max(longest, cfg.prompt_tokens + cfg.new_tokens)
    if limit and longest > limit:
        raise KDSweepError(
            f"field 'block_size': sequences of {longest} tokens exceed the teacher's "
            f"{limit} positions ({cfg.teacher})"
        )
    if cfg.student_init == "random" and not is_shape(cfg.student):
        _check_student_tokenizer(cfg.student, ref)
    teacher, hit = teacher_entry(ref, cache, log)
    corpus = load_corpus(cfg.corpus_spec(), teacher.tokenizer(), cfg.block_size)
    blocks = {
        "train": first_blocks(corpus.blocks["train"], cfg.data_subset),
        "dev": first_blocks(corpus.blocks["dev"], cfg.eval_subset),
        "test": first_blocks(corpus.blocks["test"], cfg.eval_subset),
    }
    topk, cache_hit = topk_cache(teacher, blocks, cfg.topk, cache, log)
    seqkd = None
    if isinstance(cfg, SeqKDConfig):
        prompts = blocks["train"][:, : cfg.prompt_tokens]
        seqkd = seqkd_rows(topk, teacher, prompts, cfg.new_tokens, log)
    return LMData(blocks, teacher, hit, topk, cache_hit, seqkd)


def _check_student_tokenizer(student: str, ref: Any) -> None:
    """A pretrained student must share the teacher's tokenizer (checked before any write)."""
    from transformers import AutoTokenizer

    try:
        mine = AutoTokenizer.from_pretrained(student)
    except Exception as e:  # noqa: BLE001
        raise KDSweepError(
            f"field 'student': cannot load a tokenizer from {student} ({e})"
        ) from None
    theirs = AutoTokenizer.from_pretrained(ref.path, **ref.kwargs())
    if not same_tokenizer(mine, theirs):
        raise KDSweepError(
            f"field 'student': {student} has another tokenizer than the teacher {ref.source} "
            f"({len(mine.get_vocab())} vs {len(theirs.get_vocab())} entries or different ids); "
            "token-level distillation needs the same vocabulary"
        )


class Weights(nn.Module):
    """The student as checkpoints see it: tied weights (embeddings = head) saved once and
    re-tied on load (safetensors refuses two names for one storage)."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        seen: set[int] = set()
        out = {}
        for k, v in self.student.state_dict(*args, **kwargs).items():
            if v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                out[k] = v
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> Any:  # type: ignore[override]
        result = self.student.load_state_dict(state, strict=False)
        self.student.tie_weights()
        if strict and result.unexpected_keys:
            raise KeyError(f"unexpected keys {result.unexpected_keys[:3]}")
        return result


def train_rows(cfg: LMConfig, data: LMData) -> dict[str, Any]:
    """Training rows: token rows [N, L] + the loss mask's first target position, and the
    cached teacher top-k aligned with the corpus blocks (seqkd: the teacher's continuations)."""
    if data.seqkd is not None:  # targets: only the teacher-generated tokens
        return {"tokens": data.seqkd, "first_target": cfg.prompt_tokens - 1}  # type: ignore[attr-defined]
    logp, idx, tail = data.cache.rows("train")
    return {"tokens": data.blocks["train"].numpy(), "first_target": 0,
            "logp": logp, "idx": idx, "tail": tail}  # fmt: skip


def _batch(
    rows: dict[str, Any],
    idx: torch.Tensor,
    device: torch.device,
    rng: np.random.Generator,
    teacher: nn.Module | None,
) -> LMBatch:
    """inputs / targets (shifted by one) / mask, and the teacher's cached rows when present."""
    order = np.sort(idx.numpy())  # memmap reads in file order
    tokens = torch.from_numpy(np.ascontiguousarray(rows["tokens"][order])).long().to(device)
    mask = torch.ones_like(tokens[:, 1:], dtype=torch.bool)
    mask[:, : rows["first_target"]] = False
    cached = {
        key: torch.from_numpy(np.ascontiguousarray(rows[key][order])).to(device)
        for key in ("logp", "idx", "tail")
        if key in rows
    }
    return LMBatch(tokens[:, :-1], tokens[:, 1:], mask, rng, teacher=teacher, **cached)


@recover_oom
def run_lm_trial(cfg: LMConfig, objective: Objective) -> None:
    """Train the student for `cfg.epochs`, reporting dev metrics + a checkpoint every epoch.
    A config whose `needs.live_teacher` (on_policy) gets the teacher loaded into the trial;
    the objective reads it as `batch.teacher`."""
    threads = set_threads(cfg.threads or int(tune_io.cpu_share()))
    device = pick_device(cfg.device)
    data = prepare_lm(cfg, log=lambda m: None)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, cfg.student_init, cfg.student_layers,
                            str(data.teacher.model_dir)).to(device)  # fmt: skip
    model = Weights(student)
    teacher = data.teacher.load()[0].to(device) if cfg.needs.live_teacher else None
    rows = train_rows(cfg, data)
    n = len(rows["tokens"])
    steps_per_epoch = optimizer_steps(math.ceil(n / cfg.batch_size), cfg.grad_accum)
    total = cfg.epochs * steps_per_epoch
    opt, sched = make_optimizer(student, cfg.lr, cfg.weight_decay, cfg.warmup_ratio, total)
    amp = Precision.of(cfg.precision, device)
    stepper = Stepper(student.parameters(), opt, sched, amp.scaler, cfg.grad_clip, cfg.grad_accum)
    with tune_io.restored_checkpoints() as ckpts:
        start_epoch, train_seconds = resume_state(ckpts, model, opt, sched, amp.scaler)
    static = {
        **count_parameters(student),
        "threads": threads,
        "steps_per_epoch": steps_per_epoch,
        "effective_batch_size": cfg.effective_batch_size,
        "train_rows": n,
        "cache_bytes_per_token": data.cache.bytes_per_token,
        "teacher_dev_perplexity": data.cache.meta.get("teacher_dev_perplexity", math.nan),
        **oom_metrics(),
    }
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        metrics = _train_epoch(cfg, student, teacher, rows, objective, stepper, amp, epoch, device)
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        metrics.update(evaluate(student, data, "dev", device))
        tokens = metrics.pop("train_tokens")
        metrics.update(static, epoch=epoch + 1, epoch_seconds=epoch_seconds,
                       train_seconds=train_seconds, tokens_per_second=tokens / epoch_seconds,
                       lr=sched.get_last_lr()[0])  # fmt: skip
        ckpt_dir = tune_io.new_checkpoint_dir()
        save_state(ckpt_dir, model, opt, sched, amp.scaler, epoch + 1, train_seconds, cfg, metrics)
        student.config.to_json_file(ckpt_dir / "student_config.json")
        if epoch + 1 == cfg.epochs and cfg.continuation_tokens:
            write_continuations(ckpt_dir / "continuations.md", student, data, cfg)
        tune_io.report(metrics, ckpt_dir)


def _train_epoch(
    cfg: LMConfig,
    student: nn.Module,
    teacher: nn.Module | None,
    rows: dict[str, Any],
    objective: Objective,
    stepper: Stepper,
    amp: Precision,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One epoch (0-based); the mean of every loss component, plus the target tokens seen."""
    student.train()
    tokens = 0
    rng = np.random.default_rng([cfg.seed, epoch])  # on_policy's coin, resumable per epoch
    for step, idx in enumerate(batches(len(rows["tokens"]), cfg.batch_size, True, cfg.seed, epoch)):
        batch = _batch(rows, idx, device, rng, teacher)
        with amp.autocast():
            loss, parts = objective(student, batch)
        tokens += int(batch.mask.sum())
        stepper.micro_step(loss, parts, epoch, step)
    return {**stepper.end_epoch(), "train_tokens": tokens}


@torch.no_grad()
def evaluate(student: nn.Module, data: LMData, split: str, device: torch.device) -> dict:
    """Perplexity on `split`; on dev also KL(teacher || student) on the cached top-k + tail
    (T = 1, a lower bound of the full KL) and top-1 agreement with the teacher."""
    student.eval()
    blocks = data.blocks[split]
    cached = data.cache.rows(split) if split == "dev" else None
    nll = kl = agree = 0.0
    count = 0
    for a in range(0, len(blocks), EVAL_BATCH):
        ids = blocks[a : a + EVAL_BATCH].long().to(device)
        logits = student(input_ids=ids[:, :-1]).logits.float()
        nll += float(torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))  # fmt: skip
        count += ids[:, 1:].numel()
        if cached is not None:
            logp, idx, tail = (torch.from_numpy(np.array(c[a : a + EVAL_BATCH])).to(device)
                               for c in cached)  # fmt: skip
            p, q = topk_support(logits, logp, idx, tail)
            kl += float(kl_terms(p, q, "forward_kl").sum())
            agree += float((logits.argmax(-1) == idx[..., 0].long()).sum())
    out = {f"{split}_perplexity": math.exp(nll / max(count, 1)), f"{split}_nll": nll / count}
    if cached is not None:
        out.update(dev_kl=kl / count, dev_top1_agreement=agree / count)
    return out


def write_continuations(path: Path, student: nn.Module, data: LMData, cfg: LMConfig) -> None:
    """The teacher's and the student's greedy continuations of the fixed prompts (markdown)."""
    student.eval()
    tokenizer = data.teacher.tokenizer()
    mine = greedy_continuations(student.cpu(), tokenizer, PROMPTS, cfg.continuation_tokens)
    student.to(pick_device(cfg.device))
    theirs = data.cache.meta.get("continuations", {})
    lines = [f"# Greedy continuations ({cfg.continuation_tokens} tokens)", ""]
    for prompt in PROMPTS:
        lines += [f"**{prompt}**", "", f"- teacher: {theirs.get(prompt, '?')!r}",
                  f"- student: {mine[prompt]!r}", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def load_checkpoint_student(ckpt: Path) -> nn.Module:
    """The student of a trial checkpoint (its saved architecture + weights), in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(Path(ckpt) / "student_config.json")
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    Weights(student).load_state_dict(load_file(str(Path(ckpt) / "model.safetensors")))
    return student.eval()


def evaluate_lm_checkpoint(cfg: LMConfig, ckpt: Path, split: str = "test") -> dict[str, float]:
    """Perplexity of a trial checkpoint on a split (the sweep's final answer uses 'test')."""
    data = prepare_lm(cfg, log=lambda m: None)
    student = load_checkpoint_student(Path(ckpt))
    out = evaluate(student, data, split, torch.device("cpu"))
    out[f"teacher_{split}_perplexity"] = data.cache.meta.get(
        f"teacher_{split}_perplexity", math.nan
    )
    return out


def probe_parts(cfg: LMConfig) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """(student, loss_of) at a trial's worst shapes, for the GPU packing probe
    (trainables/probe.py): batch_size x the longest sequence, CE + a top-k divergence term
    (and, for on_policy, the live teacher's forward on the same batch)."""
    data = prepare_lm(cfg, log=lambda m: None)
    device = pick_device(cfg.device)
    student = build_student(cfg.student, cfg.student_init, cfg.student_layers,
                            str(data.teacher.model_dir)).to(device)  # fmt: skip
    teacher = data.teacher.load()[0].to(device) if cfg.needs.live_teacher else None
    length = cfg.block_size
    if isinstance(cfg, SeqKDConfig | OnPolicyConfig):
        length = max(length, cfg.prompt_tokens + cfg.new_tokens)
    vocab = student.config.vocab_size
    ids = torch.randint(0, vocab, (cfg.batch_size, length), device=device)
    k = cfg.topk
    logp = torch.log_softmax(torch.randn(cfg.batch_size, length - 1, k + 1, device=device), -1)
    idx = torch.randint(0, vocab, (cfg.batch_size, length - 1, k), device=device)

    def loss_of() -> torch.Tensor:
        from kdsweep.lm.losses import next_token_ce, topk_divergence

        logits = student(input_ids=ids[:, :-1]).logits
        loss = next_token_ce(logits, ids[:, 1:], None)
        tail = logp[..., -1].exp()
        loss = loss + topk_divergence(logits, logp[..., :-1], idx, tail, None, "forward_kl")
        if teacher is not None:
            with torch.no_grad():
                teacher(input_ids=ids[:, :-1])
        return loss

    return student, loss_of
