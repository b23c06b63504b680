"""BiLSTM-CTC model: shapes, padding invariance, parameter count, learns on real audio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import needs_tts

from kdsweep.speech.data import build_synthetic_corpus, featurize, load_manifest, pad_collate
from kdsweep.speech.losses import ctc_loss
from kdsweep.speech.models import BiLSTMCTC, count_parameters, stack_frames


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core box OpenMP spin-waiting makes 2 threads far slower."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.mark.unit
def test_shapes_and_hidden_states() -> None:
    torch.manual_seed(0)
    model = BiLSTMCTC(hidden=32, layers=3, stack=3, dropout=0.0).eval()
    feats = torch.randn(2, 50, 80)
    lens = torch.tensor([50, 37])
    with torch.no_grad():
        out = model(feats, lens)
    assert out.logits.shape == (2, 17, 29)
    assert out.out_lens.tolist() == [17, 13]
    assert len(out.hidden_states) == 3
    assert all(h.shape == (2, 17, 64) for h in out.hidden_states)
    assert float(out.hidden_states[-1][1, 13:].abs().sum()) == 0.0  # padded steps are zeros
    logits, out_lens, hidden = out  # also usable as a tuple
    assert logits is out.logits and model.hidden_dim == 64 and model.num_layers == 3
    assert model(feats, lens, return_hidden=False).hidden_states == []


@pytest.mark.unit
def test_padding_does_not_change_outputs() -> None:
    torch.manual_seed(0)
    model = BiLSTMCTC(hidden=16, layers=2, stack=2, dropout=0.0).eval()
    short = torch.randn(1, 21, 80)
    padded = torch.cat([short, torch.randn(1, 9, 80) * 10], dim=1)
    batch = torch.cat([padded, torch.randn(1, 30, 80)])
    with torch.no_grad():
        alone = model(short, torch.tensor([21]))
        both = model(batch, torch.tensor([21, 30]))
    n = int(alone.out_lens[0])
    assert n == 11
    assert torch.allclose(alone.logits[0, :n], both.logits[0, :n], atol=1e-5)


@pytest.mark.unit
def test_stack_frames() -> None:
    x = torch.arange(2 * 7 * 2, dtype=torch.float).reshape(2, 7, 2)
    y, lens = stack_frames(x, torch.tensor([7, 4]), 3)
    assert y.shape == (2, 3, 6) and lens.tolist() == [3, 2]
    assert y[0, 0].tolist() == x[0, :3].reshape(-1).tolist()
    assert y[0, 2, 2:].abs().sum() == 0  # zero-padded tail


@pytest.mark.unit
def test_count_parameters() -> None:
    model = BiLSTMCTC(n_mels=80, hidden=8, layers=2, vocab_size=29, stack=3)

    def lstm(i: int, h: int) -> int:
        return 2 * 4 * h * (i + h + 2)  # 2 directions, 4 gates, W_ih, W_hh, two biases

    expected = lstm(240, 8) + lstm(16, 8) + 16 * 29 + 29
    assert count_parameters(model) == expected


@pytest.mark.trial
@needs_tts  # the synthetic corpus speaks with espeak-ng and flite
def test_tiny_model_lowers_ctc_loss_on_real_audio(tmp_path: Path) -> None:
    torch.manual_seed(0)
    utts = load_manifest(build_synthetic_corpus(tmp_path, 12, seed=5, noise_snr_db=None))
    fs = featurize(utts, tmp_path / "cache")
    feats, feat_lens, targets, tgt_lens = pad_collate([fs[i] for i in range(len(fs))])
    model = BiLSTMCTC(hidden=48, layers=2, stack=3, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(feats, feat_lens, return_hidden=False)
        loss = ctc_loss(out.logits, targets, out.out_lens, tgt_lens)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
