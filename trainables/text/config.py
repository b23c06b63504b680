"""Typed configs of the text-classification conditions (one dataclass per trainable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from kdsweep.config import BaseConfig, choice, in_range, positive
from kdsweep.errors import KDSweepError
from kdsweep.text.data import BUILTIN, DataSpec
from kdsweep.text.models import check_student, check_teacher, is_shape
from kdsweep.text.teacher_store import TeacherRecipe
from kdsweep.text.transfer import check_source
from trainables.conditions import Needs, transfer_capable


@dataclass
class TextConfig(BaseConfig):
    """Independent training of a BERT student on labels only (the baseline)."""

    dataset: str = "fortunes"  # fortunes | rotten_tomatoes | hf:<name> | path to .csv/.tsv/.jsonl
    text_column: str = "text"
    label_column: str = "label"
    data_subset: int = 0  # 0 = all training examples
    eval_subset: int = 0  # 0 = all dev/test examples (smoke runs cap them)
    per_class: int = 500  # fortunes: records per topic
    max_chars: int = 400
    split_seed: int = 0
    max_len: int = 64
    teacher: str = "minilm"  # minilm (shipped) | local model dir | hub name (needs internet)
    teacher_epochs: int = 2  # 0 = use `teacher` (an already fine-tuned classifier) as it is
    teacher_lr: float = 5e-5
    teacher_batch_size: int = 32
    teacher_grad_accum: int = 1  # teacher optimizer step every k batches
    teacher_precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision on CUDA only)
    # L<layers>-H<hidden>[-A<heads>] (random init, the teacher's vocabulary), or a pretrained
    # sequence classifier: a local model directory or a hub name (its own tokenizer)
    student: str = "L2-H128"
    student_init: str = "random"  # random | teacher (every other teacher layer, DistilBERT-style)
    dropout: float = 0.1
    attribution_every: int = 0  # analysis epochs: 0 = the final one only; k = also every k-th
    attribution_examples: int = 200  # dev probe for IG similarity to the teacher; 0 = off
    # IG similarity to the teacher at the analysis epochs (~5x an epoch's time): off in a search
    # (it decides nothing there); the confirm stage, the best trial and the report compute it
    attributions: bool = False
    # Transfer set: extra text the teacher labels ("" none | unlabeled | augment | .txt/.csv/.jsonl)
    transfer_set: str = ""
    transfer_size: int = 0  # transfer texts kept (0 = all available)
    transfer_ratio: float = 1.0  # transfer rows per labeled row in each epoch (0 = none used)
    augment_prob: float = 0.15  # augment: per-token mask/replace probability

    # Which conditions can learn from teacher-labeled transfer text (no labels there).
    TRANSFER_OK: ClassVar[bool] = False

    @property
    def needs(self) -> Needs:
        """The cached teacher outputs this condition reads: prepare_text builds them (for a
        transfer set too) once, before any trial; the trial reads the same declaration."""
        return Needs()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.transfer_set)
        in_range(self, "transfer_size", 0, 10**9)
        in_range(self, "transfer_ratio", 0.0, 100.0)
        in_range(self, "augment_prob", 0.0, 1.0, low_open=True)
        if self.transfer_set and not self.TRANSFER_OK:
            raise KDSweepError(
                f"field 'transfer_set': {type(self).__name__} cannot use a transfer set; only "
                f"{', '.join(transfer_capable(TextConfig))} can (without a teacher nothing "
                "labels the texts)"
            )
        if self.dataset not in BUILTIN and not self.dataset:
            raise KDSweepError("field 'dataset' is empty")
        in_range(self, "data_subset", 0, 10**9)
        in_range(self, "eval_subset", 0, 10**9)
        positive(self, "per_class", "max_chars", "max_len", "teacher_batch_size")
        positive(self, "teacher_grad_accum")
        in_range(self, "teacher_epochs", 0, 10**4)
        choice(self, "teacher_precision", ("fp32", "bf16", "fp16"))
        in_range(self, "max_len", 8, 512)
        in_range(self, "teacher_lr", 0.0, 1.0, low_open=True)
        in_range(self, "dropout", 0.0, 1.0, high_open=True)
        in_range(self, "attribution_every", 0, 10**6)
        in_range(self, "attribution_examples", 0, 10**6)
        choice(self, "student_init", ("random", "teacher"))
        check_student(self.student)  # an unknown shape, an old shape name, a bad directory
        check_teacher(self.teacher)  # a hub name that does not resolve (offline, misspelt)
        if self.student_init == "teacher" and not is_shape(self.student):
            raise KDSweepError(
                f"field 'student_init': 'teacher' builds a shape from teacher layers; "
                f"{self.student!r} is a pretrained model (use student_init=random)"
            )

    def data_spec(self) -> DataSpec:
        return DataSpec(
            dataset=self.dataset,
            text_column=self.text_column,
            label_column=self.label_column,
            per_class=self.per_class,
            max_chars=self.max_chars,
            split_seed=self.split_seed,
        )

    def teacher_recipe(self) -> TeacherRecipe:
        return TeacherRecipe(
            backbone=self.teacher,
            epochs=self.teacher_epochs,
            lr=self.teacher_lr,
            max_len=self.max_len,
            batch_size=self.teacher_batch_size,
            grad_accum=self.teacher_grad_accum,
            precision=self.teacher_precision,
        )


@dataclass
class SoftConfig(TextConfig):
    """Soft logit KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    alpha: float = 0.5
    temperature: float = 2.0

    TRANSFER_OK: ClassVar[bool] = True

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "alpha", 0.0, 1.0)
        in_range(self, "temperature", 0.0, 100.0, low_open=True)


@dataclass
class HardConfig(TextConfig):
    """Hard KD: the teacher's argmax as labels (alpha = weight of teacher labels vs gold)."""

    alpha: float = 1.0

    TRANSFER_OK: ClassVar[bool] = True

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "alpha", 0.0, 1.0)


@dataclass
class HiddenConfig(SoftConfig):
    """Hidden-state KD: MSE(proj(student layer), mapped teacher layer), plus optional soft KD."""

    alpha: float = 0.0  # weight of the soft-logit term (0 = hidden states + CE only)
    hidden_weight: float = 1.0
    layer_map: str = ""  # "" = uniform (student layer i -> teacher layer ceil(i*Lt/Ls)); "3,6"

    TRANSFER_OK: ClassVar[bool] = True  # teacher hidden states of transfer texts are cached too

    @property
    def needs(self) -> Needs:
        return Needs(logits=self.alpha > 0, hidden=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "hidden_weight", 0.0, 1e6)


@dataclass
class CosineConfig(SoftConfig):
    """Hidden-state KD by cosine distance between projected student and mapped teacher states."""

    alpha: float = 0.0  # weight of the soft-logit term (0 = cosine + CE only)
    cosine_weight: float = 1.0
    layer_map: str = ""  # as for hidden: "" = uniform, or "3,6"

    TRANSFER_OK: ClassVar[bool] = True

    @property
    def needs(self) -> Needs:
        return Needs(logits=self.alpha > 0, hidden=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "cosine_weight", 0.0, 1e6)


@dataclass
class AttentionConfig(SoftConfig):
    """Attention KD: KL between head-averaged attention maps of mapped layers."""

    alpha: float = 0.0
    attention_weight: float = 0.1  # at 1, CE lagged independent training ~2 epochs (measured)
    layer_map: str = ""

    TRANSFER_OK: ClassVar[bool] = True  # teacher attention maps of transfer texts are cached too

    @property
    def needs(self) -> Needs:
        return Needs(logits=self.alpha > 0, attention=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "attention_weight", 0.0, 1e6)


@dataclass
class CascadeConfig(SoftConfig):
    """A cascade stage: soft KD whose teacher is a previously trained student checkpoint."""

    teacher_checkpoint: str = ""  # a trial checkpoint directory ("" = the fine-tuned teacher)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_checkpoint and not Path(self.teacher_checkpoint).is_dir():
            raise KDSweepError(
                f"field 'teacher_checkpoint': {self.teacher_checkpoint} is not a directory"
            )
