"""Content-addressed teacher store: fine-tune once, cache outputs once, share with every trial.

Layout of one entry (`<root>/<id>/`):
    model/              save_pretrained() output (safetensors) + tokenizer
    meta.json           recipe, data fingerprint, label names, dev/test metrics, seconds
    logits_<split>.npy  float32 [N, K]: soft/hard KD trials read these and never run the teacher
    logits_transfer_<key>.npy  the same for a transfer set (key = hash of its tokens)
    feat_<kind>_<split>_<layers>.npy  float16 hidden states / attention maps, built lazily
                        once per layer set
    feat_<kind>_transfer_<key>_<layers>.npy  the same for a transfer set (hidden/attention KD)

The id hashes (recipe, data fingerprint): the same backbone, data and recipe always map to the
same entry, so a second sweep reuses the teacher instead of retraining it. Locking, the temp
dir + os.replace publish and the atomic meta.json are `kdsweep.store`'s; this module only
says what an entry holds.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kdsweep.epoch_resume import EpochResume
from kdsweep.errors import KDSweepError, NonFiniteLossError
from kdsweep.oom import backoff, release_gpu_memory
from kdsweep.progress import Progress
from kdsweep.store import META, Store, cached_file, content_id, npy_matches, read_json
from kdsweep.text.models import (
    check_classifier_labels,
    load_classifier,
    pick_device,
    resolve_backbone,
)
from kdsweep.train_utils import (
    batches,
    classification_metrics,
    make_optimizer,
    predict_logits,
    trim_padding,
)
from kdsweep.training import Precision, Stepper, check_finite, optimizer_steps

SPLITS = ("train", "dev", "test")
STORE_VERSION = 1  # of the entry layout below; not part of the ids, which predate it


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is fine-tuned; part of its store id."""

    backbone: str = "minilm"
    epochs: int = 2
    lr: float = 5e-5
    batch_size: int = 32
    max_len: int = 64
    seed: int = 0
    grad_accum: int = 1  # optimizer step every k batches (effective batch: batch_size x k)
    precision: str = "fp32"  # fp32 | bf16 | fp16: mixed precision on CUDA, fp32 on the CPU


# Recipe fields added after ids were first published: left out of the id at their default, so
# a teacher trained before they existed keeps its id (and its cache entry).
_LATER_FIELDS = {"grad_accum": 1, "precision": "fp32"}


class StoredTeacher:
    """One stored teacher: its model, metrics and cached outputs."""

    def __init__(self, path: Path, device: str = "auto"):
        self.path = Path(path)
        self.device = device  # where teacher passes run: the config's `device` (auto/cpu/cuda)
        meta = read_json(self.path / META)
        if meta is None:
            raise KDSweepError(f"teacher store: {self.path} has no readable {META}")
        self.meta: dict = meta
        self.id: str = meta["id"]

    @property
    def model_dir(self) -> str:
        return str(self.path / "model")

    @property
    def metrics(self) -> dict[str, float]:
        return self.meta["metrics"]

    def load_model(self, eager_attention: bool = False) -> torch.nn.Module:
        model = load_classifier(
            self.model_dir, len(self.meta["label_names"]), eager_attention=eager_attention
        )
        return model.eval()

    def logits(self, split: str) -> torch.Tensor:
        """Cached teacher logits of a split, [N, K] float32 (no teacher forward)."""
        path = self.path / f"logits_{split}.npy"
        if not npy_matches(path, np.float32, ()):
            msg = f"teacher store: {path} is missing or truncated (delete {self.path} to rebuild)"
            raise KDSweepError(msg)
        return torch.from_numpy(np.load(path))

    def transfer_logits(self, key: str, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher logits of a transfer set (content key `key`), [N, K] float32: computed once
        under a lock into `logits_transfer_<key>.npy`, then read like the splits' logits."""

        def write(tmp: Path) -> None:
            device = pick_device(self.device)
            model = self.load_model().to(device)
            rows = {**tokens, "labels": tokens["input_ids"]}
            run = functools.partial(predict_logits, model, rows, device=device)
            logits = backoff(run, 64, "the teacher's logits")
            np.save(tmp, logits.numpy().astype(np.float32))
            del model, run
            release_gpu_memory()  # the teacher's cached blocks go back to the card

        n = len(tokens["input_ids"])
        path = cached_file(
            self.path / f"logits_transfer_{key}.npy",
            write,
            lambda p: npy_matches(p, np.float32, (n,)),  # else truncated: rebuilt
        )
        return torch.from_numpy(np.load(path))

    def features(
        self, split: str, kind: str, layers: list[int], tokens: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """Cached hidden states [N, L, S, H] or head-averaged attention [N, L, S, S], float16.

        Built on first use (under a lock, so concurrent trials build it once) with one teacher
        pass, then memory-mapped: a trial pages in only the rows of its batches. A file whose
        shape does not match `tokens` and `layers` (truncated, other content) is rebuilt.
        """
        assert kind in ("hidden", "attention")
        n, s = tokens["input_ids"].shape
        name = f"feat_{kind}_{split}_{'-'.join(map(str, layers))}.npy"
        want = (n, len(layers), s) if kind == "hidden" else (n, len(layers), s, s)
        path = cached_file(
            self.path / name,
            lambda tmp: self._build_features(tmp, kind, layers, tokens),
            lambda p: npy_matches(p, np.float16, want),
        )
        return np.load(path, mmap_mode="r")

    def transfer_features(
        self, key: str, kind: str, layers: list[int], tokens: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """`features` of a transfer set (content key `key`, as in `transfer_logits`): the same
        float16 memmap, built once under a lock and published atomically, padded to the
        transfer tokens' own length S (which need not be the train split's)."""
        return self.features(f"transfer_{key}", kind, layers, tokens)

    @torch.no_grad()
    def _build_features(
        self, path: Path, kind: str, layers: list[int], tokens: dict[str, torch.Tensor]
    ) -> None:
        """Write the features of `tokens` to the .npy file `path` (one teacher pass, at a batch
        size that backs off on CUDA out-of-memory; the cached blocks are freed after it)."""
        model = self.load_model(eager_attention=kind == "attention")
        device = pick_device(self.device)
        model.to(device)
        n, s = tokens["input_ids"].shape
        h = model.config.hidden_size
        shape = (n, len(layers), s, h if kind == "hidden" else s)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
        what = f"the teacher's {kind} features"
        run = functools.partial(_feature_pass, model, tokens, kind, layers, out, device=device)
        backoff(run, 64, what)
        out.flush()
        del out, model, run
        release_gpu_memory()


@torch.no_grad()
def _feature_pass(model, tokens, kind: str, layers: list[int], out, batch_size: int, device):
    """One teacher pass over `tokens` in batches of `batch_size`, written into `out`."""
    n = len(tokens["input_ids"])
    for idx in batches(n, batch_size, shuffle=False):
        ids = tokens["input_ids"][idx].long().to(device)
        mask = tokens["attention_mask"][idx].long().to(device)
        res = model(
            input_ids=ids,
            attention_mask=mask,
            output_hidden_states=kind == "hidden",
            output_attentions=kind == "attention",
        )
        for j, layer in enumerate(layers):
            if kind == "hidden":  # hidden_states[0] is the embedding output
                val = res.hidden_states[layer]
            else:  # attentions[layer - 1]: [B, heads, S, S] -> head average
                val = res.attentions[layer - 1].mean(dim=1)
            out[idx.numpy(), j] = val.float().cpu().numpy().astype(np.float16)


class TeacherStore:
    """Directory of StoredTeacher entries keyed by content hash (a layer on `kdsweep.store`)."""

    def __init__(self, root: Path, device: str = "auto"):
        self.root = Path(root)
        self._store = Store(self.root, STORE_VERSION)
        self.device = device  # where fine-tunes and teacher passes run (the config's `device`)

    @staticmethod
    def entry_id(recipe: TeacherRecipe, data_fingerprint: str) -> str:
        fields = {k: v for k, v in asdict(recipe).items() if _LATER_FIELDS.get(k, object()) != v}
        return content_id(fields, data_fingerprint)  # no version: the ids predate it

    def get(self, entry_id: str) -> StoredTeacher | None:
        path = self._store.get(entry_id)
        return StoredTeacher(path, self.device) if path is not None else None

    def get_or_train(
        self,
        recipe: TeacherRecipe,
        data_fingerprint: str,
        label_names: list[str],
        tokens: dict[str, dict[str, torch.Tensor]],
        log: Callable[[str], None] = print,
    ) -> tuple[StoredTeacher, bool]:
        """The stored teacher for (recipe, data); fine-tunes it only on a miss.

        Returns (teacher, hit). Concurrent callers serialize on a lock; the loser of the race
        finds the winner's entry and does not train again.
        """
        if recipe.epochs == 0:
            return self._as_is(recipe, data_fingerprint, label_names, tokens, log)
        entry_id = self.entry_id(recipe, data_fingerprint)

        def build(tmp: Path) -> dict:
            log(f"teacher store: miss for {recipe.backbone} ({entry_id}); fine-tuning once")
            # Seeded before the new classifier head is initialised: same recipe, same teacher.
            torch.manual_seed(recipe.seed)
            model = load_classifier(resolve_backbone(recipe.backbone), len(label_names))
            t0 = time.perf_counter()
            resume = EpochResume(self._store.partial(entry_id))
            finetune(model, tokens, recipe, log, resume, device=self.device)
            seconds = time.perf_counter() - t0
            meta = self._save(entry_id, tmp, model, recipe.backbone, label_names, tokens, log)
            return {**meta, "recipe": asdict(recipe), "data": data_fingerprint,
                    "train_seconds": seconds}  # fmt: skip

        path, hit = self._store.get_or_build(entry_id, build)
        return StoredTeacher(path, self.device), hit

    def _as_is(
        self,
        recipe: TeacherRecipe,
        data_fingerprint: str,
        label_names: list[str],
        tokens: dict[str, dict[str, torch.Tensor]],
        log: Callable[[str], None],
    ) -> tuple[StoredTeacher, bool]:
        """teacher_epochs=0: an already fine-tuned classifier, used as it is (its labels must be
        the data's), evaluated on dev/test and its logits cached like a registered model's.
        The id hashes the model files' names/sizes/mtimes, the data and max_len."""
        path = resolve_backbone(recipe.backbone)
        check_classifier_labels(path, label_names)
        files = sorted([*Path(path).glob("*.safetensors"), *Path(path).glob("*.bin")])
        stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        source = f"as-is|{path}|{stamp}|max_len={recipe.max_len}"
        entry_id = content_id({"registered": source}, data_fingerprint)

        def build(tmp: Path) -> dict:
            log(f"teacher store: using {recipe.backbone} as it is ({entry_id}); evaluating once")
            model = load_classifier(path, len(label_names)).eval()
            meta = self._save(entry_id, tmp, model, path, label_names, tokens, log, source)
            return {**meta, "recipe": asdict(recipe), "data": data_fingerprint}

        entry, hit = self._store.get_or_build(entry_id, build)
        return StoredTeacher(entry, self.device), hit

    def register(
        self,
        model: torch.nn.Module,
        source: str,
        tokenizer_dir: str,
        label_names: list[str],
        tokens: dict[str, dict[str, torch.Tensor]],
        log: Callable[[str], None] = print,
    ) -> StoredTeacher:
        """Store an already-trained model (a cascade stage's student) as a teacher."""
        entry_id = content_id({"registered": source}, "")
        path, _ = self._store.get_or_build(
            entry_id,
            lambda tmp: self._save(
                entry_id, tmp, model, tokenizer_dir, label_names, tokens, log, source
            ),
        )
        return StoredTeacher(path, self.device)

    def _save(
        self,
        entry_id: str,
        tmp: Path,
        model: torch.nn.Module,
        tokenizer_src: str,
        label_names: list[str],
        tokens: dict[str, dict[str, torch.Tensor]],
        log: Callable[[str], None],
        source: str = "",
    ) -> dict:
        """Write the model, tokenizer and every split's logits into the entry's temp dir `tmp`;
        returns its meta (the store adds the id and publishes it)."""
        from transformers import AutoTokenizer

        (tmp / "model").mkdir(parents=True)
        model.save_pretrained(tmp / "model")  # safetensors
        AutoTokenizer.from_pretrained(resolve_backbone(tokenizer_src)).save_pretrained(
            tmp / "model"
        )
        device = next(model.parameters()).device
        metrics = {}
        for split in SPLITS:
            logits = predict_logits(model, tokens[split], 64, device)
            np.save(tmp / f"logits_{split}.npy", logits.numpy().astype(np.float32))
            if split != "train":
                for k, v in classification_metrics(logits, tokens[split]["labels"]).items():
                    metrics[f"{split}_{k}"] = v
        log(
            f"teacher store: saved {entry_id}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        )
        return {"label_names": label_names, "metrics": metrics, "source": source}


def finetune(
    model: torch.nn.Module,
    tokens: dict[str, dict[str, torch.Tensor]],
    recipe: TeacherRecipe,
    log: Callable[[str], None] = print,
    resume: EpochResume | None = None,
    device: str = "auto",
) -> int:
    """Plain AdamW fine-tune with linear warm-up/decay; a progress bar over the batches (loss,
    dev accuracy per epoch), one summary line at the end. With `resume`, every epoch is
    checkpointed there and a rerun continues after the last complete one (same result as an
    uninterrupted run). Returns the number of epochs trained by this call."""
    torch.manual_seed(recipe.seed)
    device = pick_device(device)
    model.to(device)
    train = tokens["train"]
    n = len(train["labels"])
    if n == 0:
        raise KDSweepError("teacher: the training split is empty")
    per_epoch = (n + recipe.batch_size - 1) // recipe.batch_size
    # The schedule counts optimizer steps: with grad_accum=k one step per k batches.
    total = recipe.epochs * optimizer_steps(per_epoch, recipe.grad_accum)
    opt, sched = make_optimizer(model, recipe.lr, 0.01, 0.1, total)
    amp = Precision.of(recipe.precision, device)
    scaler = amp.scaler
    stepper = Stepper(model.parameters(), opt, sched, scaler, 1.0, recipe.grad_accum)
    state = resume.load(model) if resume is not None else None
    done = 0
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        scaler.load_state_dict(state["scaler"])
        done = int(state["epoch"])
        log(f"teacher fine-tune: resuming after epoch {done}/{recipe.epochs}")
    dev_acc = float("nan")
    with Progress((recipe.epochs - done) * per_epoch, "teacher fine-tune") as bar:
        for epoch in range(done, recipe.epochs):
            _train_epoch(model, train, stepper, amp, recipe, epoch, device, bar)
            dev_logits = predict_logits(model, tokens["dev"], 64, device)
            dev_acc = classification_metrics(dev_logits, tokens["dev"]["labels"])["accuracy"]
            bar.update(0, info=f"epoch {epoch + 1}/{recipe.epochs}, dev acc {dev_acc:.3f}")
            if resume is not None:
                train_state = {"opt": opt.state_dict(), "sched": sched.state_dict(),
                               "scaler": scaler.state_dict()}  # fmt: skip
                resume.save(epoch + 1, model, train_state)
    log(
        f"teacher fine-tuned: {recipe.epochs} epoch(s) ({recipe.epochs - done} in this run), "
        f"dev accuracy {dev_acc:.3f}"
    )
    return recipe.epochs - done


def _train_epoch(model, train, stepper, amp, recipe, epoch, device, bar: Progress) -> None:
    """One epoch of `finetune` (0-based `epoch`, micro-batches of `recipe.batch_size` under
    `amp`'s autocast), one bar step per batch."""
    model.train()
    n = len(train["labels"])
    order = batches(n, recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=epoch)
    for step, idx in enumerate(order):
        ids, mask = trim_padding(train["input_ids"][idx], train["attention_mask"][idx])
        with amp.autocast():
            out = model(
                input_ids=ids.long().to(device),
                attention_mask=mask.long().to(device),
                labels=train["labels"][idx].to(device),
            )
        try:
            check_finite(out.loss, {}, epoch + 1, step, "teacher fine-tune")
        except NonFiniteLossError as e:  # before any trial: a clear error line, exit 2
            raise KDSweepError(str(e)) from None
        stepper.backward(out.loss)
        bar.update(1, info=f"epoch {epoch + 1}/{recipe.epochs}, loss {out.loss.item():.3f}")
    stepper.flush()
