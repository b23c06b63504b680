"""Text trial checkpoints as models: a cascade stage's teacher (a previous stage's student,
registered in the teacher store) and the student rebuilt from a trial checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from kdsweep.errors import KDSweepError
from kdsweep.text.data import TextSplits, tokenize_splits
from kdsweep.text.models import build_student, is_shape, resolve_student
from kdsweep.text.teacher_store import StoredTeacher, TeacherStore
from trainables.text.config import CascadeConfig


def cascade_teacher(
    cfg: CascadeConfig,
    base: StoredTeacher,
    splits: TextSplits,
    cache: Path,
    log: Callable[[str], None],
) -> StoredTeacher:
    """Register a trained student checkpoint as a teacher (its logits cached like any other),
    with the tokenizer it was trained with: the base teacher's for a shape, its own for a
    pretrained student."""
    ckpt = Path(cfg.teacher_checkpoint)
    if not (ckpt / "model.safetensors").is_file():
        raise KDSweepError(f"field 'teacher_checkpoint': {ckpt} has no model.safetensors")
    try:
        model, trial_cfg = load_student_from_checkpoint(ckpt, base)
    except KDSweepError as e:
        raise KDSweepError(f"field 'teacher_checkpoint': {e}") from None
    tok_dir = vocab_source(trial_cfg, base.model_dir)
    tokens = tokenize_splits(splits, tok_dir, cfg.max_len, cache)
    store = TeacherStore(base.path.parent)
    source = f"{ckpt.resolve()}|{(ckpt / 'model.safetensors').stat().st_mtime_ns}"
    return store.register(model, source, tok_dir, base.meta["label_names"], tokens, log)


def vocab_source(trial_cfg: dict, base_dir: str, depth: int = 0) -> str:
    """The model whose tokenizer (and, for a shape, vocabulary size) a trial used: a pretrained
    student's own; a shape's teacher's -- the base teacher `base_dir`, or, in a cascade, the
    source of the checkpoint that taught it (followed back through `teacher_checkpoint`)."""
    student = trial_cfg["student"]
    if not is_shape(student):
        return resolve_student(student)
    parent = trial_cfg.get("teacher_checkpoint") or ""
    if not parent or depth > 32:
        return base_dir
    try:
        parent_cfg = json.loads((Path(parent) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise KDSweepError(f"teacher checkpoint {parent}: cannot read config.json ({e})") from e
    return vocab_source(parent_cfg, base_dir, depth + 1)


def load_student_from_checkpoint(ckpt: Path, teacher: StoredTeacher) -> tuple[nn.Module, dict]:
    """Rebuild a student from a trial checkpoint (config.json + model.safetensors).

    A checkpoint that is corrupt, from another kind of model, or trained on a different label
    set than `teacher`'s dataset fails with a `KDSweepError` naming the checkpoint.
    """
    from transformers import AutoConfig

    labels = teacher.meta["label_names"]
    try:
        trial_cfg = json.loads((ckpt / "config.json").read_text())
        state = load_file(str(ckpt / "model.safetensors"))
        student = trial_cfg["student"]
    except Exception as e:  # noqa: BLE001 (missing/corrupt file or key: say which checkpoint)
        raise KDSweepError(f"checkpoint {ckpt}: cannot load ({type(e).__name__}: {e})") from e
    head = state.get("student.classifier.weight")
    if head is not None and head.shape[0] != len(labels):
        raise KDSweepError(
            f"checkpoint {ckpt}: trained on {head.shape[0]} labels, but dataset "
            f"{trial_cfg.get('dataset', '?')!r} here has {len(labels)} ({labels})"
        )
    source = vocab_source(trial_cfg, teacher.model_dir)
    model = build_student(student, AutoConfig.from_pretrained(source), len(labels))
    try:
        model.load_state_dict(
            {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
        )
    except RuntimeError as e:  # another student size/architecture than config.json says
        raise KDSweepError(f"checkpoint {ckpt}: weights do not fit {student}: {e}") from e
    return model.eval(), trial_cfg
