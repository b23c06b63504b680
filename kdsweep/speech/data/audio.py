"""Audio input: read any soundfile format as 16 kHz mono float32; one torch thread for prep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import soundfile as sf
import torch
import torchaudio
from torch import Tensor, nn

from kdsweep.errors import KDSweepError

SAMPLE_RATE = 16_000


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Read an audio file with soundfile as mono float32 [N], resampled to ``sample_rate``."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise KDSweepError(f"path: cannot read audio file {path}: {exc}") from None
    wave = torch.from_numpy(data.mean(axis=1))
    if sr != sample_rate:
        wave = _resample(wave, sr, sample_rate)
    return wave


def _resample(wave: Tensor, sr: int, target_sr: int) -> Tensor:
    """torchaudio resample with the input zero-padded to a multiple of 200 ms.

    The resampler's conv caches one oneDNN primitive (~1 MB) per input length; bucketing the
    length bounds that cache (measured: +0.7 MB RSS per utterance otherwise). Resampling already
    zero-pads the edges, so trailing zeros leave the kept samples unchanged.
    """
    n = wave.shape[-1]
    bucket = max(1, sr // 5)
    padded = nn.functional.pad(wave, (0, (-n) % bucket))
    out_len = -(-n * target_sr // sr)  # ceil(n * target / sr), torchaudio's own output length
    return torchaudio.functional.resample(padded, sr, target_sr)[..., :out_len]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count.

    Small per-utterance ops gain nothing from 2 threads, and on a busy 2-core machine OpenMP
    spin-waiting made them up to ~100x slower (measured), so data preparation uses one.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
