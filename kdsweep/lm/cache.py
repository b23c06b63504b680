"""The LM teacher store and its top-k caches, built once before any trial and memory-mapped.

    teacher = teacher_entry(ref, cache)                  # lm_teachers/<id>/model: HF folder
    topk = topk_cache(teacher, corpus, k, cache)         # lm_caches/<id>/{split}_*.npy
    topk.rows("train")                                   # (log-probs, ids, tail) memmaps

A teacher entry is the teacher materialised once as a plain Hugging Face folder (a GGUF file is
dequantized to float32 once, ~20 s, instead of in every trial that needs the weights: on_policy,
seqkd, `student_init=teacher`). A top-k cache entry is keyed by (teacher entry, k, block size)
and the content of the token blocks it covers; per split it holds, for every predicted position
of every block, the teacher's k largest log-probs (float16), their token ids (int32) and the
probability mass outside them (float32): k * 6 + 4 bytes per token instead of 2 * V for fp16
logits (V = 49,152 for SmolLM2: 100 vs 98,304 bytes at k = 16). Entries follow
kdsweep/store.py: built under a lock in a temp folder, published with one rename, so trials
never read a half-written cache. Sequence-level KD continuations are derived files of the
entry (`cached_file`). No ray, no mlflow.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.lm.data import SPLITS
from kdsweep.lm.losses import teacher_topk
from kdsweep.lm.models import TeacherRef, load_teacher, load_teacher_config, max_positions
from kdsweep.progress import progress
from kdsweep.store import ResumableRows, Store, cached_file, content_id, npy_matches, read_json

TEACHER_STORE, CACHE_STORE = "lm_teachers", "lm_caches"
PROMPTS = ("The meaning of life is", "Once upon a time, there was", "A computer is")
BATCH = 8  # teacher forward batch (blocks)


@dataclass
class LMTeacher:
    """A materialised teacher: its folder (config, tokenizer, safetensors) and meta."""

    id: str
    model_dir: Path
    meta: dict[str, Any]

    def load(self) -> tuple[torch.nn.Module, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(self.model_dir)

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir)


def teacher_entry(ref: TeacherRef, cache: Path, log: Any = print) -> tuple[LMTeacher, bool]:
    """The teacher materialised in the store (built on first use); (entry, reused?)."""
    store = Store(cache / TEACHER_STORE)
    entry_id = content_id({"teacher": ref.fingerprint()}, "")
    if store.get(entry_id) is None:
        load_teacher_config(ref)  # a bad teacher fails here, before a temp folder exists

    def build(tmp: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        log(f"[kdsweep] loading teacher {ref.source} (once; GGUF weights are dequantized)")
        model, tokenizer = load_teacher(ref)
        model = _plain(model)
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        return {
            "source": ref.source,
            "architecture": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "layers": model.config.num_hidden_layers,
            "vocab": model.config.vocab_size,
            "max_positions": max_positions(model.config),
            "gguf": bool(ref.gguf_file),
            "load_seconds": time.perf_counter() - t0,
        }

    path, hit = store.get_or_build(entry_id, build)
    return LMTeacher(entry_id, path / "model", store.meta(entry_id) or {}), hit


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """A GGUF-loaded model is marked quantized and refuses `save_pretrained`, although its
    weights are already dequantized float32: the same weights in an unmarked copy."""
    if getattr(model, "hf_quantizer", None) is None:
        return model
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


@dataclass
class TopKCache:
    """A published top-k cache: memory-mapped per split, plus the teacher's own numbers."""

    id: str
    path: Path
    meta: dict[str, Any]

    def rows(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log-probs fp16 [N, S-1, k], ids int32 [N, S-1, k], tail fp32 [N, S-1]), mapped."""
        return tuple(  # type: ignore[return-value]
            np.load(self.path / f"{split}_{name}.npy", mmap_mode="r")
            for name in ("logp", "idx", "tail")
        )

    @property
    def bytes_per_token(self) -> float:
        k = int(self.meta["k"])
        return k * (2 + 4) + 4


def topk_cache(
    teacher: LMTeacher, blocks: dict[str, torch.Tensor], k: int, cache: Path, log: Any = print
) -> tuple[TopKCache, bool]:
    """The teacher's top-k over `blocks` (every split), computed once; (cache, reused?)."""
    fp = content_id({s: _digest(blocks[s]) for s in SPLITS}, "")
    block_size = int(blocks["train"].shape[1])
    entry_id = content_id({"teacher": teacher.id, "k": k, "block_size": block_size}, fp)
    store = Store(cache / CACHE_STORE)

    def build(tmp: Path) -> dict[str, Any]:
        model, tokenizer = teacher.load()
        work = store.partial(entry_id)  # survives a kill: the next build resumes from it
        t0, meta = time.perf_counter(), {"k": k, "block_size": block_size, "teacher": teacher.id}
        for split in SPLITS:
            nll, n = _write_split(model, blocks[split], k, work, split, log)
            meta[f"teacher_{split}_perplexity"] = math.exp(nll / max(n, 1))
            meta[f"{split}_tokens"] = n
            for name in ("logp", "idx", "tail"):
                os.replace(work / f"{split}_{name}.npy", tmp / f"{split}_{name}.npy")
        meta["seconds"] = time.perf_counter() - t0
        meta["continuations"] = greedy_continuations(model, tokenizer, PROMPTS, 32)
        return meta

    path, hit = store.get_or_build(entry_id, build)
    return TopKCache(
        entry_id, path, store.meta(entry_id) or read_json(path / "meta.json") or {}
    ), hit


def _digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


@torch.no_grad()
def _write_split(
    model: torch.nn.Module, blocks: torch.Tensor, k: int, work: Path, split: str, log: Any = print
) -> tuple[float, int]:
    """Teacher top-k of one split into three .npy memmaps in `work`; (summed NLL, predicted
    tokens). After every batch the arrays are flushed and `<split>_done.json` records the rows
    written and the NLL so far, so a build killed after hours resumes at its last batch (a
    teacher forward over a real corpus on CPU cores is the slow part of an LM sweep)."""
    n, s = blocks.shape
    spec = {"logp": (np.float16, (n, s - 1, k)), "idx": (np.int32, (n, s - 1, k))}
    spec["tail"] = (np.float32, (n, s - 1))
    out = ResumableRows(
        work / f"{split}_done.json",
        {m: (work / f"{split}_{m}.npy", dtype, shape) for m, (dtype, shape) in spec.items()},
    )
    nll = float(out.totals.get("nll", 0.0))
    if out.done:
        log(f"[kdsweep] teacher top-{k} ({split}): resuming at block {out.done} of {n}")
    starts = range(out.done, n, BATCH)
    for a in progress(starts, total=len(starts), desc=f"teacher top-{k} ({split})"):
        ids = blocks[a : a + BATCH].long()
        logits = model(input_ids=ids).logits[:, :-1].float()
        v, i, t = teacher_topk(logits, k)
        out.arrays["logp"][a : a + BATCH], out.arrays["idx"][a : a + BATCH] = v, i
        out.arrays["tail"][a : a + BATCH] = t
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
        )
        nll += float(ce)
        out.commit(min(a + BATCH, n), nll=nll)
    out.close()  # close the maps before the files are moved
    return nll, n * (s - 1)


@torch.no_grad()
def greedy_continuations(
    model: torch.nn.Module, tokenizer: Any, prompts: tuple[str, ...], tokens: int
) -> dict[str, str]:
    """Greedy continuations of fixed prompts (no sampling: the same model gives the same text)."""
    out = {}
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
        out[prompt] = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
    return out


def seqkd_rows(
    cache: TopKCache,
    teacher: LMTeacher,
    prompts: torch.Tensor,
    new_tokens: int,
    log: Any = print,
) -> np.ndarray:
    """Teacher continuations (greedy) of `prompts` [N, P]: int32 [N, P + new_tokens], generated
    once into the cache entry and memory-mapped; every seqkd trial reads the same file."""
    n, p = prompts.shape
    name = f"seqkd_{content_id({'new': new_tokens}, _digest(prompts))}.npy"

    def write(tmp: Path) -> None:
        # Generated into a resume file beside the entry (a kill keeps what was generated),
        # which becomes the published file once every row is there.
        work = cache.path / f".{name}.partial.npy"
        state_path = work.with_suffix(".json")
        out = ResumableRows(state_path, {"ids": (work, np.int32, (n, p + new_tokens))})
        if out.done:
            log(f"[kdsweep] teacher continuations (seqkd): resuming at prompt {out.done} of {n}")
        model, tokenizer = teacher.load()
        starts = range(out.done, n, BATCH)
        for a in progress(starts, total=len(starts), desc="teacher continuations (seqkd)"):
            ids = prompts[a : a + BATCH].long()
            gen = generate(model, ids, new_tokens, tokenizer.eos_token_id, sample=False)
            out.arrays["ids"][a : a + BATCH] = gen.numpy()
            out.commit(min(a + BATCH, n))
        out.close()
        os.replace(work, tmp)
        state_path.unlink(missing_ok=True)

    path = cached_file(
        cache.path / name, write, lambda f: npy_matches(f, np.int32, (n, p + new_tokens))
    )
    return np.load(path, mmap_mode="r")


@torch.no_grad()
def generate(
    model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int, eos: int, sample: bool
) -> torch.Tensor:
    """Prompts [B, P] (no padding: equal lengths) + exactly `new_tokens` tokens each, greedy
    or sampled at temperature 1 from the full distribution. `min_new_tokens` holds the
    end-of-text token back until the last step, so every row has the same length and the loss
    mask needs no per-row bookkeeping."""
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=sample,
        top_k=0 if sample else None,
        top_p=1.0 if sample else None,
        temperature=1.0 if sample else None,
        pad_token_id=eos,
    )
    return out.to(torch.int32)
