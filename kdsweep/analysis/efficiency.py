"""What a student costs to deploy: parameters, size on disk, inference throughput and latency.

Speed is measured on the trial's device with its thread share, on one fixed batch (the first
`batch_size` probe examples, trimmed to their longest real sequence), so every student of a sweep
sees the same input. Timings of trials that share CPU cores are noisy: compare medians across
seeds, not single trials.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch
from torch import nn

from kdsweep.train_utils import trim_padding


def size_on_disk_mb(model: nn.Module) -> float:
    """MB (2**20 bytes) of the model's state dict saved as safetensors (shared tensors once)."""
    from safetensors.torch import save_model

    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_model(model, path)
        return os.path.getsize(path) / 2**20
    finally:
        os.unlink(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_speed(
    model: nn.Module,
    tokens: dict[str, torch.Tensor],
    batch_size: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    budget_s: float = 5.0,
) -> dict[str, float]:
    """Median latency (ms per batch) and throughput (examples/s) of `model` on one fixed batch.

    Runs `warmup` untimed passes, then up to `repeats` timed ones (fewer if `budget_s` runs out,
    at least one).
    """
    device = next(model.parameters()).device
    ids, mask = trim_padding(
        tokens["input_ids"][:batch_size], tokens["attention_mask"][:batch_size]
    )
    ids, mask = ids.long().to(device), mask.long().to(device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(input_ids=ids, attention_mask=mask)
        _sync(device)
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(times) < repeats and (not times or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    latency = statistics.median(times)
    return {"latency_ms": latency * 1000.0, "throughput": len(ids) / latency}


def efficiency_metrics(
    model: nn.Module, tokens: dict[str, torch.Tensor], batch_size: int = 32, **speed_kwargs
) -> dict[str, float]:
    """{"params", "size_mb", "throughput", "latency_ms"} of a model (see `measure_speed`)."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "size_mb": size_on_disk_mb(model),
        **measure_speed(model, tokens, batch_size, **speed_kwargs),
    }
