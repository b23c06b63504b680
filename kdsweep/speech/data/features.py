"""Log-mel features, SpecAugment, the cached `FeatureSet` and length-bucketed batching."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from kdsweep.errors import KDSweepError
from kdsweep.filelock import locked
from kdsweep.speech.data.audio import SAMPLE_RATE, _torch_threads, read_audio
from kdsweep.speech.data.corpus import Utterance
from kdsweep.speech.data.feature_store import CHUNK_UTTERANCES, MappedFeatures, load_or_build
from kdsweep.speech.data.text import CharVocab

# 2: a float16 memory map + offsets per content (1: one torch.save blob loaded whole).
FEATURE_VERSION = 2


class LogMel(nn.Module):
    """80-bin log-mel filterbank, 25 ms window / 10 ms hop at 16 kHz, per-utterance CMVN."""

    def __init__(self, n_mels: int = 80, sample_rate: int = SAMPLE_RATE, eps: float = 1e-6):
        super().__init__()
        self.n_mels, self.sample_rate, self.eps = n_mels, sample_rate, eps
        win = int(0.025 * sample_rate)  # 400 samples
        hop = int(0.010 * sample_rate)  # 160 samples -> 100 frames/s
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=win, win_length=win, hop_length=hop, n_mels=n_mels
        )

    def config(self) -> dict[str, float]:
        """Settings that determine the features (part of the feature cache key)."""
        return {"n_mels": self.n_mels, "sample_rate": self.sample_rate, "eps": self.eps}

    def forward(self, wave: Tensor) -> Tensor:
        """wave [N] -> features [T, n_mels] with T = N // hop + 1."""
        # eps=1e-6 floors log power at -13.8 (about -60 dB below unit power): silence and digital
        # zeros stay finite without dominating the per-utterance statistics.
        feats = torch.log(self.mel(wave) + self.eps).transpose(0, 1)
        mean = feats.mean(dim=0, keepdim=True)
        # unbiased=False so a 1-frame clip gives std 0 (then clamped) instead of NaN
        std = feats.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-5)
        return (feats - mean) / std


class SpecAugment(nn.Module):
    """SpecAugment (frequency + time masks) on a batch [B, T, F]; identity in eval mode."""

    def __init__(
        self, freq_mask: int = 15, time_mask: int = 25, n_freq_masks: int = 2, n_time_masks: int = 2
    ):
        super().__init__()
        self.freq = nn.ModuleList(
            torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
            for _ in range(n_freq_masks)
        )
        self.time = nn.ModuleList(
            torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)
            for _ in range(n_time_masks)
        )

    def forward(self, feats: Tensor) -> Tensor:
        """Masked copy of ``feats``; masks fill with 0, the per-utterance mean after CMVN."""
        if not self.training:
            return feats
        x = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T] as torchaudio expects
        for m in (*self.freq, *self.time):
            x = m(x)
        return x.squeeze(1).transpose(1, 2)


_FIELDS = ("ids", "feats", "targets", "transcripts", "voices", "splits")


@dataclass
class FeatureSet(torch.utils.data.Dataset):
    """Per-utterance log-mels [T, 80] and label ids, plus metadata.

    ``feats`` is a list of tensors or, from `featurize`, a `MappedFeatures` that reads each
    utterance from the on-disk float16 cache when indexed (so a trial's memory does not grow
    with the corpus). ``lengths`` (frames per utterance) never reads features.
    """

    ids: list[str]
    feats: Sequence[Tensor]
    targets: list[Tensor]
    transcripts: list[str]
    voices: list[str]
    splits: list[str]
    lengths: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.feats, MappedFeatures):
            self.lengths = self.feats.lengths
        else:
            self.lengths = [int(f.shape[0]) for f in self.feats]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.feats[i], self.targets[i]

    def take(self, rows: Iterable[int]) -> FeatureSet:
        """The utterances ``rows``, in that order (features stay on disk when they were)."""
        rows = list(rows)
        if isinstance(self.feats, MappedFeatures):
            feats: Sequence[Tensor] = self.feats.take(rows)
        else:
            feats = [self.feats[i] for i in rows]
        rest = ([getattr(self, a)[i] for i in rows] for a in _FIELDS[2:])
        return FeatureSet([self.ids[i] for i in rows], feats, *rest)

    def concat(self, other: FeatureSet) -> FeatureSet:
        """Rows of ``self`` then rows of ``other``."""
        return FeatureSet(*(getattr(self, a) + getattr(other, a) for a in _FIELDS))

    def select(self, split: str | Iterable[str]) -> FeatureSet:
        """Subset by split name(s), e.g. ``fs.select("train")``."""
        wanted = {split} if isinstance(split, str) else set(split)
        return self.take(i for i, s in enumerate(self.splits) if s in wanted)

    def batches(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, pad_targets: bool = False
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Length-bucketed, collated batches (see ``bucket_batches`` and ``pad_collate``).

        Pass the epoch number as ``seed`` for a new order each epoch.
        """
        for _, batch in self.indexed_batches(batch_size, shuffle, seed, pad_targets):
            yield batch

    def indexed_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, pad_targets: bool = False
    ) -> Iterator[tuple[list[int], tuple[Tensor, Tensor, Tensor, Tensor]]]:
        """Like ``batches`` but yields (utterance indices, batch): for matching hypotheses to
        ``transcripts`` in evaluation (unshuffled batches are sorted by length)."""
        for idx in bucket_batches(self.lengths, batch_size, shuffle=shuffle, seed=seed):
            yield idx, pad_collate([self[i] for i in idx], pad_targets=pad_targets)


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def featurize(
    utterances: Sequence[Utterance],
    cache_dir: str | Path,
    logmel: LogMel | None = None,
    vocab: CharVocab | None = None,
    chunk: int = CHUNK_UTTERANCES,
) -> FeatureSet:
    """Compute log-mel features once per content into ``cache_dir/feats-<hash>/`` (a float16
    memory map, see `feature_store`) and return them as a lazily read `FeatureSet`.

    The key hashes the audio bytes, transcripts, ids, splits and the feature settings, so a
    changed corpus or setting never reuses stale features. Features are computed ``chunk``
    utterances at a time; an interrupted build continues after its last saved chunk.
    """
    if not utterances:
        raise KDSweepError("utterances: empty list, nothing to featurize")
    logmel = logmel or LogMel()
    vocab = vocab or CharVocab()
    h = hashlib.sha1(json.dumps({"v": FEATURE_VERSION, **logmel.config()}, sort_keys=True).encode())
    for u in utterances:
        if not Path(u.path).is_file():
            raise KDSweepError(f"utterance {u.id}: field 'path': audio file not found: {u.path}")
        h.update(f"{u.id}\t{u.transcript}\t{u.voice}\t{u.split}\t".encode())
        h.update(_file_digest(Path(u.path)).encode())
    key = h.hexdigest()[:16]
    columns = {
        "ids": [u.id for u in utterances],
        "transcripts": [u.transcript for u in utterances],
        "voices": [u.voice for u in utterances],
        "splits": [u.split for u in utterances],
    }
    meta = {"version": FEATURE_VERSION, "key": key, **logmel.config(), **columns}

    def compute(i: int) -> Tensor:
        return logmel(read_audio(utterances[i].path, logmel.sample_rate))

    cache = Path(cache_dir) / f"feats-{key}"
    with locked(cache.with_name(cache.name + ".lock")), torch.no_grad(), _torch_threads(1):
        feats = load_or_build(cache, meta, logmel.n_mels, compute, chunk)
    targets = [torch.tensor(vocab.encode(t), dtype=torch.long) for t in columns["transcripts"]]
    return FeatureSet(columns["ids"], feats, targets, *list(columns.values())[1:])


def pad_collate(
    batch: Sequence[tuple[Tensor, Tensor]], pad_targets: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Collate (feat [T, F], target [L]) pairs.

    Returns feats [B, Tmax, F] (zero-padded), feat_lens [B], targets (concatenated 1-D, or
    [B, Lmax] zero-padded when ``pad_targets``) and target_lens [B]. Both target layouts are
    accepted by ``torch.nn.functional.ctc_loss``.
    """
    feats = [b[0] for b in batch]
    tgts = [b[1] for b in batch]
    feat_lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    tgt_lens = torch.tensor([t.shape[0] for t in tgts], dtype=torch.long)
    x = nn.utils.rnn.pad_sequence(feats, batch_first=True)
    if pad_targets:
        y = nn.utils.rnn.pad_sequence(tgts, batch_first=True) if tgts else torch.zeros(0, 0)
    else:
        y = torch.cat(tgts) if tgts else torch.zeros(0, dtype=torch.long)
    return x, feat_lens, y.long(), tgt_lens


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    chunk_batches: int = 20,
) -> list[list[int]]:
    """Batches of indices with similar lengths: shuffle, cut into chunks of ``chunk_batches``
    batches, sort each chunk by length, split into batches, shuffle the batch order.

    Similar lengths mean little padding (faster LSTMs); chunking keeps batches random across
    epochs. Without ``shuffle`` the result is fully sorted by length (good for evaluation).
    """
    if batch_size < 1:
        raise KDSweepError(f"batch_size: must be >= 1, got {batch_size}")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n).tolist()
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for c in range(0, n, chunk):
        part = sorted(idx[c : c + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
