"""Cached teacher features of a trial's rows, read from float16 memory maps per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureRows:
    """Cached teacher features of a trial's rows: the train split's memmap, then (with a
    transfer set) the transfer set's, read in place (never concatenated in memory).

    Each part is float16 [N_i, L, S_i, H] (hidden) or [N_i, L, S_i, S_i] (attention, `square`)
    padded to its own tokens' length S_i, which may differ between train and transfer rows.
    """

    parts: tuple[np.ndarray, ...]
    square: bool  # attention maps: the key axis is trimmed/padded like the query axis

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def take(self, idx: np.ndarray, s: int) -> torch.Tensor:
        """Rows `idx` (of the concatenation) as float32, cut or zero-padded to length s.

        Positions past a part's S_i lie past every real token of its rows (S_i is their padded
        width), so the zeros land only on masked positions: hidden MSE ignores them, and for
        an attention row a zero key column is the probability the teacher gave that padded
        key (softmax of a masked logit is exactly 0), so real query rows still sum to 1.
        """
        idx = np.asarray(idx)
        first = self.parts[0]
        width = s if self.square else first.shape[3]
        out = np.zeros((len(idx), first.shape[1], s, width), dtype=np.float32)
        start = 0
        for part in self.parts:
            sel = (idx >= start) & (idx < start + len(part))
            if sel.any():
                k = min(s, part.shape[2])
                rows = part[idx[sel] - start]  # a memmap reads only these rows
                if self.square:
                    out[sel, :, :k, :k] = rows[:, :, :k, :k]
                else:
                    out[sel, :, :k] = rows[:, :, :k]
            start += len(part)
        return torch.from_numpy(out)


def mean_hidden_state(
    feats: np.ndarray, attention_mask: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """The teacher's mean state per cached layer, [L, H] float32, over the real tokens of
    `feats` ([N, L, S, H] float16, e.g. a memmap; read `chunk` rows at a time) whose rows
    `attention_mask` [N, S'] describes. Hidden-state KD centres the teacher on it
    (kdsweep.losses.standardize_states)."""
    n, n_layers, s, h = feats.shape
    k = min(s, attention_mask.shape[1])
    total, count = torch.zeros(n_layers, h, dtype=torch.float64), 0.0
    for start in range(0, n, chunk):
        rows = torch.from_numpy(np.asarray(feats[start : start + chunk, :, :k], dtype=np.float32))
        m = attention_mask[start : start + chunk, :k].to(torch.float64)
        total += torch.einsum("blsh,bs->lh", rows.double(), m)
        count += float(m.sum())
    return (total / max(count, 1.0)).float()
