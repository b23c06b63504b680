"""BiLSTM-CTC acoustic model with per-layer hidden states (for hidden-state distillation)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


class CTCOutput(NamedTuple):
    """Model output: ``logits`` [B, T', V], ``out_lens`` [B], ``hidden_states`` [B, T', 2H] each."""

    logits: Tensor
    out_lens: Tensor
    hidden_states: list[Tensor]


def stack_frames(feats: Tensor, lens: Tensor, stack: int) -> tuple[Tensor, Tensor]:
    """Concatenate ``stack`` consecutive frames: [B, T, F] -> [B, ceil(T/stack), F*stack].

    Frames past ``lens`` and the tail are zeroed; output lengths are ceil(lens / stack), so a
    partial last group still counts as one frame.
    """
    if stack == 1:
        return feats, lens
    b, t, f = feats.shape
    # Zero frames past each length first: a partial last group must not see padding content.
    valid = torch.arange(t, device=feats.device)[None, :] < lens.to(feats.device)[:, None]
    feats = feats * valid.unsqueeze(-1).to(feats.dtype)
    pad = (-t) % stack
    if pad:
        feats = nn.functional.pad(feats, (0, 0, 0, pad))
    out = feats.reshape(b, (t + pad) // stack, f * stack)
    return out, torch.div(lens + stack - 1, stack, rounding_mode="floor")


class BiLSTMCTC(nn.Module):
    """Frame stacking -> ``layers`` bidirectional LSTMs -> linear CTC head over ``vocab_size``.

    Frame stacking by ``stack`` (default 3: 30 ms per step) divides the LSTM sequence length and
    hence CPU time by ``stack``; for character CTC at 10 ms features this still leaves enough
    steps per character at normal speaking rates. The LSTMs are separate modules so every
    layer's output is returned for hidden-state KD.
    """

    def __init__(
        self,
        n_mels: int = 80,
        hidden: int = 256,
        layers: int = 4,
        vocab_size: int = 29,
        stack: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if layers < 1 or hidden < 1 or stack < 1:
            raise ValueError(f"BiLSTMCTC: layers, hidden, stack must be >= 1 ({layers=})")
        self.n_mels, self.hidden, self.stack, self.vocab_size = n_mels, hidden, stack, vocab_size
        self.lstms = nn.ModuleList(
            nn.LSTM(n_mels * stack if i == 0 else 2 * hidden, hidden, batch_first=True,
                    bidirectional=True)
            for i in range(layers)
        )  # fmt: skip
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, vocab_size)

    @property
    def hidden_dim(self) -> int:
        """Width of each hidden state (2 * hidden, both directions)."""
        return 2 * self.hidden

    @property
    def num_layers(self) -> int:
        """Number of LSTM layers (= number of hidden states returned)."""
        return len(self.lstms)

    def output_lengths(self, lens: Tensor) -> Tensor:
        """Frame counts after stacking: ceil(lens / stack)."""
        return torch.div(lens + self.stack - 1, self.stack, rounding_mode="floor")

    def forward(self, feats: Tensor, lens: Tensor, return_hidden: bool = True) -> CTCOutput:
        """feats [B, T, n_mels], lens [B] -> CTCOutput (logits are unnormalized).

        Positions past ``out_lens`` are zeros in the hidden states and hold the head's bias in
        the logits; losses must mask them (all losses in ``kdsweep.speech.losses`` do).
        """
        x, out_lens = stack_frames(feats, lens, self.stack)
        total = x.shape[1]
        packed = pack_padded_sequence(x, out_lens.cpu(), batch_first=True, enforce_sorted=False)
        hidden_states: list[Tensor] = []
        h = packed
        for i, lstm in enumerate(self.lstms):
            if i > 0:  # dropout between layers, applied on the packed data (no re-packing)
                h = PackedSequence(self.dropout(h.data), h.batch_sizes, h.sorted_indices,
                                   h.unsorted_indices)  # fmt: skip
            h, _ = lstm(h)
            if return_hidden or i == len(self.lstms) - 1:
                padded, _ = pad_packed_sequence(h, batch_first=True, total_length=total)
                if return_hidden:
                    hidden_states.append(padded)
        logits = self.head(self.dropout(padded))
        return CTCOutput(logits, out_lens.to(logits.device), hidden_states)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
