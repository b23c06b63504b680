"""Import a BiLSTM-CTC the user trained elsewhere (`teacher_checkpoint=<path>`).

Accepted files:
- a kdsweep trial checkpoint directory (`model.safetensors` with `student.*` keys);
- a `.safetensors` state dict;
- a `.pt` / `.pth` file, loaded with ``torch.load(weights_only=True)`` (tensors, numbers,
  strings and dicts only: no pickled code ever runs). Either a state dict, or a dict that holds
  one under ``model``, ``state_dict``, ``model_state_dict`` or ``student``.

Expected key layout (that of ``kdsweep.speech.models.BiLSTMCTC``), for layers i = 0..L-1:

    lstms.{i}.weight_ih_l0            [4H, F]   F = n_mels * stack for i = 0, else 2H
    lstms.{i}.weight_hh_l0            [4H, H]
    lstms.{i}.bias_ih_l0 / bias_hh_l0 [4H]
    lstms.{i}.*_reverse               the same for the backward direction
    head.weight                       [V, 2H]   V = vocabulary incl. the CTC blank (index 0)
    head.bias                         [V]

A ``module.`` (DataParallel) or ``model.`` prefix on every key is stripped. The shape (layers,
hidden, frame stacking, input features, vocabulary) is read from the tensors and checked
against the corpus, so a mismatch is one clear error before any trial starts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kdsweep.errors import KDSweepError
from kdsweep.speech.models import BiLSTMCTC

WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "student")
_LSTM_KEY = re.compile(r"^lstms\.(\d+)\.(weight|bias)_(ih|hh)_l0(_reverse)?$")


@dataclass(frozen=True)
class ImportedShape:
    """What the tensors say about the model."""

    layers: int
    hidden: int
    stack: int
    n_mels: int
    vocab_size: int

    @property
    def arch(self) -> str:
        return f"L{self.layers}-H{self.hidden}-S{self.stack}"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file or kdsweep checkpoint directory (see module doc)."""
    p = Path(path).expanduser()
    where = f"field 'teacher_checkpoint': {p}"
    if not p.exists():
        raise KDSweepError(f"{where}: no such file or directory")
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            raise KDSweepError(f"{where}: a directory needs model.safetensors (a kdsweep trial "
                               "checkpoint); or pass a .pt/.pth/.safetensors file")  # fmt: skip
        state = _load_safetensors(p / "model.safetensors", where)
    elif p.suffix == ".safetensors":
        state = _load_safetensors(p, where)
    elif p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        state = _load_torch(p, where)
    else:
        raise KDSweepError(f"{where}: unknown checkpoint type {p.suffix!r}; use .pt, .pth, "
                           ".safetensors or a kdsweep checkpoint directory")  # fmt: skip
    return _strip_prefix(state, where)


def _load_safetensors(p: Path, where: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except Exception as e:  # SafetensorError, OSError: a corrupt or truncated file
        raise KDSweepError(f"{where}: not a readable safetensors file ({e})") from None


def _load_torch(p: Path, where: str) -> dict[str, Tensor]:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for anything beyond tensors and plain data
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch's message has ANSI bold
        first = text.splitlines()[0] if text else type(e).__name__
        raise KDSweepError(
            f"{where}: torch.load(weights_only=True) refused it ({first}); it holds pickled "
            "Python objects, not only tensors. Re-save just the weights: "
            "torch.save(model.state_dict(), 'teacher.pt')"
        ) from None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise KDSweepError(f"{where}: holds no state dict (a dict of tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise KDSweepError(f"{where}: its dict holds no tensors (keys: {sorted(obj)[:6]})")
    return tensors


def _strip_prefix(state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    for prefix in ("student.", "module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):  # a kdsweep checkpoint with extra heads
        state = {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
    if not state:
        raise KDSweepError(f"{where}: no tensors found")
    return state


def checkpoint_digest(path: str | Path) -> str:
    """Content hash of a checkpoint file (of model.safetensors for a directory)."""
    p = Path(path).expanduser()
    p = p / "model.safetensors" if p.is_dir() else p
    if not p.is_file():
        raise KDSweepError(f"field 'teacher_checkpoint': no such file: {p}")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


def infer_shape(state: dict[str, Tensor], n_mels: int, where: str = "") -> ImportedShape:
    """Layers, hidden, stack and vocabulary of a BiLSTM-CTC state dict (see module doc)."""
    where = where or "field 'teacher_checkpoint'"
    layers = sorted({int(m.group(1)) for k in state if (m := _LSTM_KEY.match(k))})
    if not layers or "head.weight" not in state:
        sample = ", ".join(sorted(state)[:6])
        raise KDSweepError(f"{where}: not a kdsweep BiLSTM-CTC state dict (needs lstms.<i>."
                           f"weight_ih_l0 ... and head.weight; found {sample}, ...)")  # fmt: skip
    if layers != list(range(len(layers))):
        raise KDSweepError(f"{where}: LSTM layers {layers} are not numbered 0..{len(layers) - 1}")
    w_hh = state.get("lstms.0.weight_hh_l0")
    w_ih = state.get("lstms.0.weight_ih_l0")
    if w_hh is None or w_ih is None or w_hh.dim() != 2 or w_ih.dim() != 2:
        raise KDSweepError(f"{where}: lstms.0.weight_ih_l0 / weight_hh_l0 missing or not 2-D")
    hidden, feat_in = int(w_hh.shape[1]), int(w_ih.shape[1])
    if feat_in % n_mels:
        raise KDSweepError(
            f"{where}: lstms.0.weight_ih_l0 has {feat_in} input features, not a multiple of the "
            f"corpus' {n_mels} mel bins (input = n_mels x frame stack)"
        )
    vocab = int(state["head.weight"].shape[0])
    return ImportedShape(len(layers), hidden, feat_in // n_mels, n_mels, vocab)


def load_bilstm_ctc(
    path: str | Path, n_mels: int, vocab_size: int, dropout: float = 0.0
) -> tuple[BiLSTMCTC, ImportedShape]:
    """The imported model (eval mode) and its shape; every shape checked against the corpus."""
    where = f"field 'teacher_checkpoint': {Path(path).expanduser()}"
    state = read_state_dict(path)
    shape = infer_shape(state, n_mels, where)
    if shape.vocab_size != vocab_size:
        raise KDSweepError(
            f"{where}: head.weight has {shape.vocab_size} outputs but the corpus vocabulary has "
            f"{vocab_size} (blank + characters); the model was trained on another alphabet"
        )
    model = BiLSTMCTC(n_mels, shape.hidden, shape.layers, vocab_size, shape.stack, dropout)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [f"{k} {got[k]} (expected {expected[k]})" for k in expected if k in got
             and got[k] != expected[k]]  # fmt: skip
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
        if extra:
            parts.append(f"unexpected {', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else ""))
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:3]))
        raise KDSweepError(f"{where}: does not fit a {shape.arch} BiLSTM-CTC: {'; '.join(parts)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), shape
