"""The one training step every loop uses (text student, text teacher fine-tune, speech student,
speech teacher/twin): mixed precision, the finite-loss check, gradient accumulation, clipping,
the optimizer + scheduler step, and the torch thread count. Pure torch: no ray, no mlflow.

    amp = Precision.of(cfg.precision, device)
    stepper = Stepper(model.parameters(), opt, sched, amp.scaler, cfg.grad_clip, cfg.grad_accum)
    for step, batch in enumerate(batches):
        with amp.autocast():
            loss, parts = loss_fn(...)
        check_finite(loss, parts, epoch + 1, step)
        stepper.backward(loss)       # steps the optimizer every `grad_accum` micro-batches
    stepper.flush()                  # ... and at the end of the epoch
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdsweep.errors import KDSweepError, NonFiniteLossError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and the grad scaler (enabled only for fp16 on CUDA)."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    @classmethod
    def of(cls, precision: str, device: torch.device) -> Precision:
        """fp32 | bf16 | fp16; mixed precision only on CUDA (on the CPU it is plain fp32)."""
        dtype = AMP_DTYPES.get(precision) if device.type == "cuda" else None
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise KDSweepError(
                "field 'precision': bf16 needs a card with native bf16 (compute capability 8.0 "
                "or newer); this card only emulates it: use fp16 or fp32"
            )
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        return cls(device.type, dtype, scaler)

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def check_finite(
    loss: Tensor, parts: dict[str, Tensor], epoch: int, step: int, component: str = ""
) -> None:
    """Raise `NonFiniteLossError` naming the bad loss component(s), the (1-based) epoch and the
    step; `component` prefixes the message (e.g. 'teacher fine-tune')."""
    if torch.isfinite(loss):
        return
    bad = [k for k, v in parts.items() if not torch.isfinite(v)] or ["loss"]
    where = f"{component}: " if component else ""
    raise NonFiniteLossError(
        f"{where}non-finite loss ({loss.item()}) at epoch {epoch} step {step}: component(s) "
        f"{', '.join(bad)}; lower lr or temperature, or keep grad_clip on"
    )


def optimizer_steps(micro_batches: int, grad_accum: int) -> int:
    """Optimizer (and LR scheduler) steps of an epoch of `micro_batches` batches."""
    return math.ceil(micro_batches / grad_accum)


class Stepper:
    """Backward + optimizer step with gradient accumulation and clipping.

    Each micro-batch's loss is divided by `grad_accum`; the optimizer, the grad scaler and the
    LR scheduler step once every `grad_accum` micro-batches and at `flush()` (the epoch's end),
    so the effective batch is batch_size x grad_accum. With grad_accum = 1 this is exactly the
    plain step (no division), which keeps resumed runs bit-identical to earlier checkpoints.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        opt: torch.optim.Optimizer,
        sched: Any,
        scaler: torch.amp.GradScaler,
        grad_clip: float = 0.0,
        grad_accum: int = 1,
    ):
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        self.params = list(params)
        self.opt, self.sched, self.scaler = opt, sched, scaler
        self.grad_clip, self.grad_accum = grad_clip, grad_accum
        self.pending = 0  # micro-batches whose gradients are accumulated, not yet applied
        self.sums: dict[str, float] = {}  # this epoch's loss components, summed over batches
        self.batches = 0

    def micro_step(self, loss: Tensor, parts: dict[str, Tensor], epoch: int, step: int) -> None:
        """One training batch's tail, the same in every loop: refuse a non-finite loss (naming
        the component, 0-based `epoch`), backward it, add every component to the epoch sums."""
        check_finite(loss, parts, epoch + 1, step)
        self.backward(loss)
        for k, v in {"loss": loss, **parts}.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.batches += 1

    def end_epoch(self) -> dict[str, float]:
        """Apply a last partial accumulation group; the mean of every component this epoch."""
        self.flush()
        means = {k: v / self.batches for k, v in self.sums.items()}
        self.sums, self.batches = {}, 0
        return means

    def backward(self, loss: Tensor) -> None:
        """Accumulate this micro-batch's gradients; step when `grad_accum` are in."""
        if self.grad_accum > 1:
            loss = loss / self.grad_accum
        self.scaler.scale(loss).backward()
        self.pending += 1
        if self.pending == self.grad_accum:
            self.step()

    def flush(self) -> None:
        """Apply the gradients of a last, partial group (call at the end of every epoch)."""
        if self.pending:
            self.step()

    def step(self) -> None:
        if self.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.opt)
        self.scaler.update()
        # fp16: the scaler skips the optimizer step when the gradients overflowed (and lowers
        # its scale); the schedule must not advance for a step that was not taken.
        if scale is None or self.scaler.get_scale() >= scale:
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.pending = 0


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads for the rest of the process (a trial: its CPU share)."""
    threads = max(1, threads)
    torch.set_num_threads(threads)
    return threads


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to `n` inside the block, restored after it."""
    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)
