"""One preparation stage, run in its own process by tests/test_prep_kill.py (not a test).

    python tests/prep_stage.py <text|speech|synthesis|features> <root> [--slow]

Builds the stage's result under <root> through the product's own entry points (the text and
speech teacher stores, `synthesize_jobs`, the feature store) and prints one JSON line: how much
work this run did and a digest of the result. `--slow` makes the stage pause after its first
unit of saved progress and print KILLME, so the test can SIGKILL it in the middle.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)  # the same reduction order in every run: bitwise-equal results
WORK: dict[str, int] = {"units": 0}
SLOW = "--slow" in sys.argv


def pause_once(done: int, after: int) -> None:
    """In --slow mode: after `after` units are saved, say so and wait to be killed."""
    if SLOW and done == after:
        print("KILLME", flush=True)
        time.sleep(120)


def digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode() + tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def digest_files(folder: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob(pattern)):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def count_epochs(module, name: str) -> None:
    """Wrap module.<name> (one training epoch) to count calls and pause after the first."""
    real = getattr(module, name)

    def counted(*a, **k):
        out = real(*a, **k)
        WORK["units"] += 1
        return out

    setattr(module, name, counted)
    from kdsweep import epoch_resume

    save = epoch_resume.EpochResume.save

    def save_then_pause(self, epoch, model, state):
        save(self, epoch, model, state)
        pause_once(epoch, 1)

    epoch_resume.EpochResume.save = save_then_pause


def text(root: Path) -> str:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kdsweep.text import teacher_store
    from kdsweep.text.models import resolve_backbone

    backbone = root / "backbone"
    if not (backbone / "config.json").is_file():
        torch.manual_seed(123)
        cfg = BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64,
        )  # fmt: skip
        BertModel(cfg).save_pretrained(backbone)
        AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(backbone)
    g = torch.Generator().manual_seed(0)
    tokens = {
        s: {"input_ids": torch.randint(1000, 2000, (n, 16), generator=g),
            "attention_mask": torch.ones(n, 16, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=g)}
        for s, n in (("train", 96), ("dev", 16), ("test", 16))
    }  # fmt: skip
    count_epochs(teacher_store, "_train_epoch")
    recipe = teacher_store.TeacherRecipe(backbone=str(backbone), epochs=3, lr=1e-3,
                                         batch_size=8, max_len=16)  # fmt: skip
    store = teacher_store.TeacherStore(root / "store")
    found, _ = store.get_or_train(recipe, "fp", ["a", "b"], tokens)
    return digest_tensors(load_file(str(found.path / "model" / "model.safetensors")))


def speech(root: Path) -> str:
    from safetensors.torch import load_file

    from kdsweep.speech import teacher as asr_teacher
    from kdsweep.speech.data import CharVocab, FeatureSet
    from kdsweep.speech.store import ASRTeacherStore

    def feats(n: int, prefix: str, seed: int) -> FeatureSet:
        g = torch.Generator().manual_seed(seed)
        vocab, text = CharVocab(), "a cab"
        xs = [torch.randn(9 + 3 * (i % 5), 8, generator=g) for i in range(n)]
        ys = [torch.tensor(vocab.encode(text), dtype=torch.long) for _ in range(n)]
        ids = [f"{prefix}{i}" for i in range(n)]
        return FeatureSet(ids, xs, ys, [text] * n, ["v"] * n, [prefix] * n)

    count_epochs(asr_teacher, "train_epoch")
    recipe = asr_teacher.ASRTeacherRecipe(layers=2, hidden=8, stack=3, dropout=0.1, epochs=3,
                                          batch_size=4, specaugment=True, n_mels=8)  # fmt: skip
    data = {s: feats(n, s, k) for k, (s, n) in enumerate((("train", 24), ("dev", 4), ("test", 4)))}
    found, _ = ASRTeacherStore(root / "store").get_or_train(recipe, "fp", data)
    return digest_tensors(load_file(str(found.path / "model.safetensors")))


def synthesis(root: Path) -> str:
    from kdsweep.speech.data import synthesis as synth

    real = synth._synthesize

    def counted(*a, **k):
        out = real(*a, **k)
        WORK["units"] += 1
        pause_once(WORK["units"], 3)
        return out

    synth._synthesize = counted
    manifest = synth.build_synthetic_corpus(root / "corpora", 8, seed=0, num_workers=1)
    return digest_files(manifest.parent, "manifest.tsv") + digest_files(
        manifest.parent / "wav", "*.wav"
    )


def features(root: Path) -> str:
    from kdsweep.speech.data import feature_store

    save = feature_store._save_chunk

    def save_then_pause(path, feats):
        save(path, feats)
        pause_once(len(list(path.parent.glob("chunk-*.npz"))), 2)

    feature_store._save_chunk = save_then_pause

    def compute(i: int) -> torch.Tensor:
        WORK["units"] += 1
        return torch.randn(5 + i % 3, 6, generator=torch.Generator().manual_seed(i))

    meta = {"ids": [f"u{i}" for i in range(20)], "n_mels": 6}
    cache = root / "feats-x"
    feature_store.load_or_build(cache, meta, 6, compute, chunk=4)
    return digest_files(cache, "*.npy")


if __name__ == "__main__":
    stage, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    digest = {"text": text, "speech": speech, "synthesis": synthesis, "features": features}[stage](
        out
    )
    print(json.dumps({"units": WORK["units"], "digest": digest}), flush=True)
