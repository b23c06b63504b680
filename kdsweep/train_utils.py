"""Small training helpers shared by the teacher fine-tune and the student trainables."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn


def batches(
    n: int, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0
) -> Iterator[torch.Tensor]:
    """Index batches; the shuffle order is a pure function of (seed, epoch), so a resumed run
    sees exactly the batches it would have seen without the interruption."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def transfer_count(n_labeled: int, n_transfer: int, ratio: float) -> int:
    """Transfer rows mixed into each epoch: ratio per labeled row, at most the whole set."""
    return min(n_transfer, round(ratio * n_labeled))


def mixed_epoch_index(
    n_labeled: int, n_transfer: int, ratio: float, seed: int, epoch: int
) -> torch.Tensor:
    """Row ids of one epoch: all labeled rows (0..n_labeled-1) and `transfer_count` transfer
    rows (n_labeled + j), shuffled together. A pure function of (seed, epoch), so a resumed
    trial sees the same mix; each epoch draws a different subset of the transfer rows."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    k = transfer_count(n_labeled, n_transfer, ratio)
    picked = n_labeled + torch.randperm(n_transfer, generator=g)[:k]
    rows = torch.cat([torch.arange(n_labeled), picked])
    return rows[torch.randperm(len(rows), generator=g)]


def first_rows(split: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The first `n` rows of every tensor of a tokenized split (0 = all of them)."""
    return {k: (v[:n] if n else v) for k, v in split.items()}


def trim_padding(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a batch to its longest real sequence: attention cost is quadratic in padded length."""
    longest = int(mask.sum(dim=1).max().item()) if mask.numel() else 1
    return input_ids[:, : max(longest, 1)], mask[:, : max(longest, 1)]


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up then linear decay to 0 (the BERT fine-tuning schedule)."""
    warm = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, warmup_ratio: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `model`'s parameters and its `warmup_linear` schedule over `total_steps`
    optimizer steps: the optimizer of every loop (students, teacher fine-tunes, speech twin)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return opt, warmup_linear(opt, total_steps, warmup_ratio)


@torch.no_grad()
def predict_logits(
    model: nn.Module, tokens: dict[str, torch.Tensor], batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits of a classifier over a tokenized split, in order, as float32 on the CPU."""
    model.eval()
    out = []
    for idx in batches(len(tokens["labels"]), batch_size, shuffle=False):
        ids, mask = trim_padding(tokens["input_ids"][idx], tokens["attention_mask"][idx])
        logits = model(
            input_ids=ids.long().to(device), attention_mask=mask.long().to(device)
        ).logits
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (classes absent from both predictions and labels are skipped)."""
    if len(labels) == 0:
        return {"accuracy": math.nan, "f1": math.nan}
    pred = logits.argmax(dim=-1)
    acc = (pred == labels).float().mean().item()
    f1s = []
    for c in torch.unique(torch.cat([pred, labels])):
        tp = ((pred == c) & (labels == c)).sum().item()
        fp = ((pred == c) & (labels != c)).sum().item()
        fn = ((pred != c) & (labels == c)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": acc, "f1": sum(f1s) / len(f1s)}
