"""One training step of a trial at its real shapes, for measuring its peak GPU memory.

    step = probe_step(config)          # the trial's config dict (task, condition, fields)
    peak = probe_peak(config)          # kdsweep.gpu.probe_peak_memory over two such steps

The student is built as the trial builds it (text: `kdsweep.text.models.build_student` with the
projections hidden-state KD adds; speech: the BiLSTM-CTC), on the trial's device and precision,
with AdamW and the shared `Stepper`. The batch has the worst shapes a trial sees: batch_size x
max_len tokens (text) or batch_size x the longest training utterance's frames (speech). The
losses are stand-ins that keep what a KD loss keeps alive (hidden states, attention maps, the
teacher tensors of a batch); the packing margin covers the rest. Run it in a child process
(`kdsweep.gpu.run_isolated`), so the sweep's driver never holds a CUDA context; `check_and_probe`
probes every condition of a sweep there, one after the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kdsweep.gpu import check_cuda_build, probe_peak_memory
from kdsweep.oom import release_gpu_memory
from kdsweep.text.models import pick_device
from kdsweep.training import Precision, Stepper


def probe_peak(config: dict[str, Any]) -> int:
    """Bytes one trial of `config` needs on the card (allocator peak + CUDA context): its steps
    run until the optimizer holds its state (fp16 steps the GradScaler skipped do not count)."""
    step = probe_step(config)
    return probe_peak_memory(step, pick_device("cuda"), ready=step.ready)  # type: ignore[attr-defined]


def check_and_probe(configs: list[dict[str, Any]], precisions: list[str]) -> tuple[str, list[int]]:
    """The card checked against the torch build (`kdsweep.gpu.check_cuda_build`: its line),
    then the peak of each config, one after the other with the memory freed between them.
    Run in a child process (`kdsweep.gpu.run_isolated`)."""
    line = check_cuda_build(precisions)
    peaks = []
    for config in configs:
        peaks.append(probe_peak(config))
        release_gpu_memory()
    return line, peaks


def probe_step(config: dict[str, Any]) -> Callable[[], None]:
    """A callable running one forward/backward/optimizer step of the trial `config`."""
    from trainables.registry import config_for

    cfg = config_for(config)
    make = {"text": _text_step, "asr": _asr_step, "lm": _lm_step}[config.get("task", "text")]
    model, loss_of = make(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    amp = Precision.of(cfg.precision, pick_device(cfg.device))
    stepper = Stepper(model.parameters(), opt, sched, amp.scaler, cfg.grad_clip, 1)

    def step() -> None:
        model.train()
        with amp.autocast():
            loss = loss_of()
        stepper.backward(loss)

    step.model = model  # type: ignore[attr-defined]  # what it trains (for checks)
    step.ready = lambda: len(opt.state) > 0  # type: ignore[attr-defined]  # AdamW's moments exist
    return step


def _text_step(cfg: Any) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from transformers import AutoConfig

    from trainables.text.loop import _build_student, prepare_text

    data = prepare_text(cfg, log=lambda m: None)
    teacher_config = AutoConfig.from_pretrained(data.teacher.model_dir)
    student, model = _build_student(cfg, data, teacher_config)
    device = pick_device(cfg.device)
    b, s, needs = cfg.batch_size, cfg.max_len, cfg.needs
    ids = torch.randint(1, student.config.vocab_size, (b, s), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, data.splits.num_labels, (b,), device=device)

    def loss_of() -> torch.Tensor:
        out = student(
            input_ids=ids,
            attention_mask=mask,
            output_hidden_states=needs.hidden,
            output_attentions=needs.attention,
        )
        loss = torch.nn.functional.cross_entropy(out.logits.float(), labels)
        if needs.hidden:  # projected student layers vs teacher-sized targets
            for proj, h in zip(model["aux"].proj, out.hidden_states[1:], strict=False):
                target = torch.zeros(b, s, teacher_config.hidden_size, device=device)
                loss = loss + (proj(h).float() - target).pow(2).mean()
        if needs.attention:
            for a in out.attentions:
                loss = loss + (a.float() - torch.zeros_like(a, dtype=torch.float)).pow(2).mean()
        return loss

    return model, loss_of


def _lm_step(cfg: Any) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from trainables.lm.loop import probe_parts

    return probe_parts(cfg)


def _asr_step(cfg: Any) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from kdsweep.speech.losses import ctc_loss
    from trainables.speech.loop import _build_student, prepare_asr

    data = prepare_asr(cfg, log=lambda m: None)
    device = pick_device(cfg.device)
    student, model = _build_student(cfg, data.teacher, device)
    b = cfg.batch_size
    frames = max(data.feats["train"].lengths)
    x = torch.randn(b, frames, 80, device=device)
    lens = torch.full((b,), frames, dtype=torch.long)
    out_len = int(student.output_lengths(torch.tensor([frames])).item())
    tgt_len = max(1, out_len // 3)
    targets = torch.randint(1, 29, (b, tgt_len), device=device)
    tgt_lens = torch.full((b,), tgt_len, dtype=torch.long, device=device)
    hidden = bool(cfg.needs.hidden_layers)

    def loss_of() -> torch.Tensor:
        out = student(x, lens, return_hidden=hidden)
        loss = ctc_loss(out.logits, targets, out.out_lens.to(device), tgt_lens)
        for h in out.hidden_states if hidden else []:
            loss = loss + h.float().pow(2).mean()
        return loss

    return model, loss_of
