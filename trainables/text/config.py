"""Typed configs of the text-classification conditions (one dataclass per trainable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from kdsweep.config import POSITIVE, BaseConfig, Range, Temperature, param
from kdsweep.errors import KDSweepError
from kdsweep.text.data import BUILTIN, DataSpec
from kdsweep.text.models import check_student, check_teacher, is_shape
from kdsweep.text.teacher_store import TeacherRecipe
from kdsweep.text.transfer import check_source
from trainables.conditions import Needs, transfer_capable

UNIT = Range(0.0, 1.0)
WEIGHT = Range(0.0, 1e6)


@dataclass
class TextConfig(BaseConfig):
    """Independent training of a BERT student on labels only (the baseline)."""

    dataset: str = param(
        "fortunes", "fortunes | rotten_tomatoes | hf:<name> | path to a .csv/.tsv/.jsonl file"
    )
    text_column: str = param("text", "column holding the text (user data files)")
    label_column: str = param("label", "column holding the label (user data files)")
    data_subset: int = param(0, "training examples used; 0 = all", range=Range(0, 10**9))
    eval_subset: int = param(
        0, "dev/test examples used; 0 = all (smoke runs cap them)", range=Range(0, 10**9)
    )
    per_class: int = param(500, "fortunes: records per topic", range=POSITIVE)
    max_chars: int = param(400, "fortunes: longest record kept, in characters", range=POSITIVE)
    split_seed: int = param(0, "seed of the train/dev/test split")
    max_len: int = param(64, "tokens per example (longer ones are truncated)", range=Range(8, 512))
    teacher: str = param(
        "minilm", "minilm (shipped) | a local model directory | a hub name (needs internet)"
    )
    teacher_epochs: int = param(
        2,
        "teacher fine-tuning epochs; 0 = use `teacher` (an already fine-tuned classifier) as is",
        range=Range(0, 10**4),
    )
    teacher_lr: float = param(
        5e-5, "teacher fine-tuning learning rate", range=Range(0.0, 1.0, True)
    )
    teacher_batch_size: int = param(32, "teacher fine-tuning batch size", range=POSITIVE)
    teacher_grad_accum: int = param(1, "teacher optimizer step every k batches", range=POSITIVE)
    teacher_precision: str = param(
        "fp32", "teacher fine-tuning precision (mixed precision on CUDA only)",
        choices=("fp32", "bf16", "fp16"),
    )  # fmt: skip
    student: str = param(
        "L2-H128",
        "L<layers>-H<hidden>[-A<heads>] (random init, the teacher's vocabulary), or a "
        "pretrained sequence classifier: a local model directory or a hub name (own tokenizer)",
    )
    student_init: str = param(
        "random",
        "random | teacher (every other teacher layer, DistilBERT-style)",
        choices=("random", "teacher"),
    )
    dropout: float = param(0.1, "student dropout", range=Range(0.0, 1.0, high_open=True))
    attribution_every: int = param(
        0, "analysis epochs: 0 = the final one only; k = also every k-th", range=Range(0, 10**6)
    )
    attribution_examples: int = param(
        200,
        "dev examples probed for IG attribution similarity to the teacher; 0 = off",
        range=Range(0, 10**6),
    )
    attributions: bool = param(
        False,
        "IG attribution similarity to the teacher at the analysis epochs (~5x an epoch's "
        "time): off in a search (it decides nothing there); the confirm stage, the best trial "
        "and the report compute it",
    )
    transfer_set: str = param(
        "",
        'extra text the teacher labels: "" none | unlabeled | augment | a .txt/.csv/.jsonl file',
    )
    transfer_size: int = param(0, "transfer texts kept; 0 = all available", range=Range(0, 10**9))
    transfer_ratio: float = param(
        1.0, "transfer rows per labeled row in each epoch (0 = none used)", range=Range(0.0, 100.0)
    )
    augment_prob: float = param(
        0.15, "augment: per-token mask/replace probability", range=Range(0.0, 1.0, True)
    )

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
        if self.transfer_set and not self.TRANSFER_OK:
            raise KDSweepError(
                f"field 'transfer_set': {type(self).__name__} cannot use a transfer set; only "
                f"{', '.join(transfer_capable(TextConfig))} can (without a teacher nothing "
                "labels the texts)"
            )
        if self.dataset not in BUILTIN and not self.dataset:
            raise KDSweepError("field 'dataset' is empty")
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
class SoftConfig(Temperature, TextConfig):
    """Soft logit KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    alpha: float = param(0.5, "weight of the soft KD term; 1 - alpha weights CE", range=UNIT)

    TRANSFER_OK: ClassVar[bool] = True

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)


@dataclass
class HardConfig(TextConfig):
    """Hard KD: the teacher's argmax as labels (alpha = weight of teacher labels vs gold)."""

    alpha: float = param(1.0, "weight of CE on the teacher's argmax labels vs gold", range=UNIT)

    TRANSFER_OK: ClassVar[bool] = True

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)


LAYER_MAP_HELP = (
    'teacher layer per student layer: "" = uniform (student layer i -> teacher layer '
    'ceil(i*Lt/Ls)), or a comma list such as "3,6"'
)
SOFT_TERM_HELP = "weight of an added soft-logit KD term (0 = none); 1 - alpha weights CE"


@dataclass
class HiddenConfig(SoftConfig):
    """Hidden-state KD: MSE(proj(student layer), mapped teacher layer), plus optional soft KD."""

    alpha: float = param(0.0, SOFT_TERM_HELP, range=UNIT)
    hidden_weight: float = param(1.0, "weight of the hidden-state MSE", range=WEIGHT)
    layer_map: str = param("", LAYER_MAP_HELP)

    TRANSFER_OK: ClassVar[bool] = True  # teacher hidden states of transfer texts are cached too

    @property
    def needs(self) -> Needs:
        return Needs(logits=self.alpha > 0, hidden=True)


@dataclass
class CosineConfig(SoftConfig):
    """Hidden-state KD by cosine distance between projected student and mapped teacher states."""

    alpha: float = param(0.0, SOFT_TERM_HELP, range=UNIT)
    cosine_weight: float = param(1.0, "weight of the cosine distance", range=WEIGHT)
    layer_map: str = param("", LAYER_MAP_HELP)

    TRANSFER_OK: ClassVar[bool] = True

    @property
    def needs(self) -> Needs:
        return Needs(logits=self.alpha > 0, hidden=True)


@dataclass
class AttentionConfig(SoftConfig):
    """Attention KD: KL between head-averaged attention maps of mapped layers."""

    alpha: float = param(0.0, SOFT_TERM_HELP, range=UNIT)
    attention_weight: float = param(
        0.1,
        "weight of the attention-map KL (at 1, CE lagged independent training ~2 epochs: measured)",
        range=WEIGHT,
    )
    layer_map: str = param("", LAYER_MAP_HELP)

    TRANSFER_OK: ClassVar[bool] = True  # teacher attention maps of transfer texts are cached too

    @property
    def needs(self) -> Needs:
        return Needs(logits=self.alpha > 0, attention=True)


@dataclass
class DKDConfig(Temperature, TextConfig):
    """Decoupled KD (Zhao et al., 2022): CE + alpha * TCKD + beta * NCKD on cached logits."""

    alpha: float = param(1.0, "weight of TCKD (target vs non-target mass; T^2-scaled)", WEIGHT)
    beta: float = param(8.0, "weight of NCKD (among the non-target classes; T^2-scaled)", WEIGHT)

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)


@dataclass
class CascadeConfig(SoftConfig):
    """A cascade stage: soft KD whose teacher is a previously trained student checkpoint."""

    teacher_checkpoint: str = param(
        "", 'the teacher: a trial checkpoint directory ("" = the fine-tuned teacher)'
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_checkpoint and not Path(self.teacher_checkpoint).is_dir():
            raise KDSweepError(
                f"field 'teacher_checkpoint': {self.teacher_checkpoint} is not a directory"
            )
