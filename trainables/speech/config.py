"""Typed configs of the speech-recognition (BiLSTM-CTC) conditions, one dataclass per trainable."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from kdsweep.config import POSITIVE, BaseConfig, Range, Temperature, in_range, param
from kdsweep.errors import KDSweepError
from kdsweep.speech.losses import scale_milestones, temperature_at
from kdsweep.speech.teacher import ASRTeacherRecipe
from kdsweep.speech.transfer import SYNTHETIC as TRANSFER_SYNTHETIC
from kdsweep.speech.transfer import check_source
from kdsweep.text.models import layer_map
from trainables.conditions import Needs, transfer_capable

SYNTHETIC = ("commands", "open")
N_MELS = 80  # log-mel bins of kdsweep's features (kdsweep.speech.data.features.LogMel)
UNIT = Range(0.0, 1.0)
BLANK_DEFAULT = 1.0
BLANK_HELP = "weight of frames whose teacher argmax is blank (1 = like every other frame)"
LAYER_MAP_HELP = 'teacher layer per chosen student layer, 1-based ("" = uniform); "2,4"'
STUDENT_LAYERS_HELP = '1-based student layers matched by the MSE ("" = all); "2,3"'


@dataclass
class ASRConfig(BaseConfig):
    """Independent CTC training of a BiLSTM student on transcripts only (the baseline)."""

    # Which stored model teaches this condition: "" none, "teacher" the big one, "twin" the
    # student's own architecture trained alone (self-distillation).
    teacher_kind: ClassVar[str] = ""
    # Which conditions can learn from teacher-labeled transfer utterances (no transcripts there).
    TRANSFER_OK: ClassVar[bool] = False
    # The fields a `teacher_checkpoint`'s tensors fix (a sweep's --smoke preset leaves them).
    CHECKPOINT_FIXES: ClassVar[tuple[str, ...]] = ("teacher_layers", "teacher_hidden")

    # ---- corpus: synthetic TTS domain, a manifest CSV/TSV, or a LibriSpeech-style folder
    corpus: str = param(
        "commands", "commands | open (synthetic TTS) | a manifest .tsv/.csv | a LibriSpeech folder"
    )
    n_utterances: int = param(
        1500, "synthetic corpora: utterances (80/10/10 train/dev/test, held-out voices)",
        Range(10, 1_000_000),
    )  # fmt: skip
    corpus_seed: int = param(0, "seed of the synthetic corpus (sentences, voices, splits)")
    audio_column: str = param("path", "column holding the audio path (user manifests)")
    text_column: str = param("transcript", "column holding the transcript (user manifests)")
    specaugment: bool = param(False, "time + frequency masks on training features (long runs)")
    # ---- student: frame stacking -> `layers` BiLSTMs of `hidden` units per direction -> CTC
    layers: int = param(2, "student BiLSTM layers", Range(1, 12))
    hidden: int = param(128, "student BiLSTM units per direction", Range(1, 4096))
    stack: int = param(3, "feature frames stacked per step (the frame rate divisor)", Range(1, 8))
    dropout: float = param(0.1, "dropout between layers", Range(0.0, 1.0, high_open=True))
    epochs: int = param(12, "training epochs", POSITIVE)
    lr: float = param(2e-3, "peak learning rate (AdamW)", Range(0.0, 1.0, low_open=True))
    warmup_ratio: float = param(
        0.05, "share of optimizer steps with a linear LR warm-up (then linear decay)",
        Range(0.0, 1.0),
    )  # fmt: skip
    # ---- teacher (soft, hard, hidden): a bigger BiLSTM-CTC trained once per corpus + recipe
    teacher_layers: int = param(3, "teacher BiLSTM layers", Range(1, 12))
    teacher_hidden: int = param(256, "teacher BiLSTM units per direction", Range(1, 4096))
    teacher_epochs: int = param(15, "teacher training epochs", POSITIVE)
    teacher_lr: float = param(2e-3, "teacher learning rate", Range(0.0, 1.0, low_open=True))
    teacher_seed: int = param(
        1, "teacher/twin seed (!= the default student seed: a twin never starts from its "
        "pupil's init)",
    )  # fmt: skip
    teacher_checkpoint: str = param(
        "",
        "a BiLSTM-CTC trained elsewhere as the teacher (soft, hard, hidden) or twin (self): a "
        ".pt/.pth (weights_only), .safetensors or kdsweep checkpoint dir; its shape is read "
        "from the tensors",
    )
    # ---- decoding: greedy every epoch; beam + KenLM trigram at the end (and every beam_every)
    lm_weight: float = param(0.5, "beam search: weight of the LM log-probability", Range(0.0, 10.0))
    word_bonus: float = param(1.0, "beam search: bonus per word", Range(-10.0, 10.0))
    beam_width: int = param(32, "beam search width", POSITIVE)
    beam_every: int = param(
        0, "beam search every k epochs; 0 = only at the final epoch", Range(0, 10**6)
    )
    eval_cmu: bool = param(True, "out-of-domain WER on the real CMU clips at the final epoch")
    lm: str = param(
        "", '"" = kdsweep\'s trigram; an ARPA / KenLM binary, or a text file to build one from'
    )
    lm_order: int = param(3, "order of the n-gram built from a text `lm`", Range(1, 6))
    label_smoothing: float = param(
        0.0, "eps: (1-eps)*CTC + eps*KL(uniform || frame posteriors)", Range(0.0, 1.0)
    )
    keep_every: int = param(
        0, "also keep every k-th epoch's checkpoint (0 = best + latest only)", Range(0, 10**6)
    )
    # ---- transfer set: untranscribed audio the teacher labels (soft, hard, self only)
    transfer_set: str = param(
        "",
        '"" none | synthetic (extra TTS utterances) | a folder of .wav/.flac | a '
        ".txt/.lst/.csv/.tsv list",
    )
    transfer_size: int = param(
        0, "utterances kept (0 = synthetic: n_utterances; files: all)", Range(0, 100_000)
    )
    transfer_ratio: float = param(
        1.0, "transfer rows per labeled row in each epoch (0 = none used)", Range(0.0, 100.0)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.corpus not in SYNTHETIC:
            if not self.corpus:
                raise KDSweepError("field 'corpus' is empty")
            if not Path(self.corpus).expanduser().exists():
                raise KDSweepError(
                    f"field 'corpus': manifest file or folder not found: {self.corpus}"
                )
        if self.lm:
            _checked_lm(*_file_key(self.lm, "lm"))
        self._check_transfer()
        self._check_teacher_checkpoint()

    @classmethod
    def field_names(cls) -> set[str]:
        """A condition without a teacher does not take `teacher_checkpoint`: in a sweep over
        several conditions (self-distillation vs its independent baseline) the shared value
        goes only to the conditions that learn from it; alone it is an unknown parameter."""
        names = super().field_names()
        return names if cls.teacher_kind else names - {"teacher_checkpoint"}

    def _check_teacher_checkpoint(self) -> None:
        """With `teacher_checkpoint`, teacher_layers/teacher_hidden come from its tensors (a
        contradicting value is an error) and its frame stacking must be the student's."""
        if not self.teacher_checkpoint:
            return
        if not self.teacher_kind:
            raise KDSweepError(
                f"field 'teacher_checkpoint': {type(self).__name__} has no teacher to import"
            )
        where = f"field 'teacher_checkpoint': {self.teacher_checkpoint}"
        shape = _imported_shape(*_file_key(self.teacher_checkpoint, "teacher_checkpoint"))
        got_of = {"teacher_layers": shape.layers, "teacher_hidden": shape.hidden}
        for name, got in ((n, got_of[n]) for n in self.CHECKPOINT_FIXES):
            value, default = getattr(self, name), type(self).__dataclass_fields__[name].default
            if value not in (default, got):
                raise KDSweepError(
                    f"field {name!r}: {value} contradicts the checkpoint's {got} "
                    f"({shape.arch}); leave it unset with teacher_checkpoint"
                )
            setattr(self, name, got)
        if shape.stack != self.stack:
            raise KDSweepError(
                f"{where}: frame stacking {shape.stack} differs from the student's stack="
                f"{self.stack} (frame-level KD needs the same frame rate); set stack={shape.stack}"
            )

    def _check_transfer(self) -> None:
        check_source(self.transfer_set)  # transfer_size <= 100k: ~50 synthetic utterances/s
        if not self.transfer_set:
            return
        if not self.TRANSFER_OK:
            raise KDSweepError(
                f"field 'transfer_set': {type(self).__name__} cannot use a transfer set; only "
                f"{', '.join(transfer_capable(ASRConfig))} can (without a teacher nothing labels "
                "the audio; projected teacher layers are not cached for transfer audio)"
            )
        if self.transfer_set == TRANSFER_SYNTHETIC and not self.domain:
            raise KDSweepError(
                "field 'transfer_set': 'synthetic' needs a synthetic corpus (commands or open) "
                f"to draw sentences from, not {self.corpus!r}; give a folder or a list of "
                "audio files instead"
            )

    @property
    def needs(self) -> Needs:
        """The cached teacher outputs this condition reads (the prepare step and the trial)."""
        return Needs()

    def transfer_hidden_layers(self) -> tuple[int, ...]:
        """1-based teacher layers whose hidden states a transfer set needs cached."""
        return self.needs.hidden_layers if self.TRANSFER_OK else ()

    @property
    def domain(self) -> str | None:
        return self.corpus if self.corpus in SYNTHETIC else None

    def student_size(self) -> str:
        return f"L{self.layers}-H{self.hidden}"

    def teacher_recipe(self) -> ASRTeacherRecipe:
        """The big teacher of soft/hard/hidden KD (stored once per corpus + recipe)."""
        return ASRTeacherRecipe(
            layers=self.teacher_layers,
            hidden=self.teacher_hidden,
            stack=self.stack,
            dropout=self.dropout,
            epochs=self.teacher_epochs,
            lr=self.teacher_lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            grad_clip=self.grad_clip,
            specaugment=self.specaugment,
            seed=self.teacher_seed,
        )

    def twin_recipe(self) -> ASRTeacherRecipe:
        """The student's independently trained twin: same architecture and training recipe as an
        `independent` trial with seed `teacher_seed` (the teacher of self-distillation)."""
        return ASRTeacherRecipe(
            layers=self.layers,
            hidden=self.hidden,
            stack=self.stack,
            dropout=self.dropout,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            grad_clip=self.grad_clip,
            specaugment=self.specaugment,
            seed=self.teacher_seed,
        )

    def stored_teacher_recipe(self) -> ASRTeacherRecipe | None:
        """The recipe of the stored model this condition learns from (None: no teacher)."""
        if self.teacher_kind == "teacher":
            return self.teacher_recipe()
        if self.teacher_kind == "twin":
            return self.twin_recipe()
        return None


@dataclass
class ASRSoftConfig(Temperature, ASRConfig):
    """Frame-level soft KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CTC."""

    teacher_kind: ClassVar[str] = "teacher"
    TRANSFER_OK: ClassVar[bool] = True

    alpha: float = param(0.5, "weight of the frame-level KD term; 1 - alpha weights CTC", UNIT)
    blank_frame_weight: float = param(BLANK_DEFAULT, BLANK_HELP, UNIT)

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)


@dataclass
class ASRHardConfig(ASRConfig):
    """Hard KD: the teacher's greedy transcripts as CTC targets (alpha = their weight vs gold)."""

    teacher_kind: ClassVar[str] = "teacher"
    TRANSFER_OK: ClassVar[bool] = True

    alpha: float = param(1.0, "weight of CTC on the teacher's transcripts vs gold", UNIT)

    @property
    def needs(self) -> Needs:
        return Needs(transcripts=True)


@dataclass
class ASRHiddenConfig(ASRSoftConfig):
    """Hidden-state KD: alpha * KL_soft + beta * CTC + gamma * MSE(proj(student layer s),
    teacher layer t) over the chosen (s, t) pairs (`student_layers` <- `layer_map`)."""

    alpha: float = param(0.0, "weight of the soft-logit term (0 = hidden states + CTC only)", UNIT)
    hidden_weight: float = param(1.0, "weight of the hidden-state MSE", Range(0.0, 1e6))
    layer_map: str = param("", LAYER_MAP_HELP)
    student_layers: str = param("", STUDENT_LAYERS_HELP)
    beta: float = param(-1.0, "CTC weight (-1 = 1 - alpha)")
    gamma: float = param(-1.0, "MSE weight (-1 = hidden_weight)")

    TRANSFER_OK: ClassVar[bool] = False  # projected teacher layers: not cached for transfer

    @property
    def needs(self) -> Needs:
        teacher = tuple(t for _, t in self.layer_pairs())
        return Needs(logits=self.alpha > 0, hidden_layers=teacher, project=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta != -1.0:
            in_range(self, "beta", 0.0, 1e6)
        if self.gamma != -1.0:
            in_range(self, "gamma", 0.0, 1e6)
        self.layer_pairs()  # raises on a bad map, naming the field

    @property
    def ctc_weight(self) -> float:
        return 1 - self.alpha if self.beta == -1.0 else self.beta

    @property
    def mse_weight(self) -> float:
        return self.hidden_weight if self.gamma == -1.0 else self.gamma

    def mapped_layers(self) -> list[int]:
        """1-based teacher layer for each chosen student layer."""
        return [t for _, t in self.layer_pairs()]

    def layer_pairs(self) -> list[tuple[int, int]]:
        """(student layer, teacher layer) pairs, 1-based, that the MSE term matches."""
        return layer_pairs(self.layers, self.teacher_layers, self.student_layers, self.layer_map)


@dataclass
class SelfDistillConfig(ASRConfig):
    """Self-distillation from the student's stored twin (same architecture, trained alone):
    alpha * T(epoch)^2 * KL(twin_T || student_T) + beta * CTC(gold) + gamma * MSE(hidden states).

    The temperature follows a step schedule written for `reference_epochs` and rescaled to this
    run's `epochs` (milestones 30,70 of 80 -> 4,9 of 10 epochs)."""

    teacher_kind: ClassVar[str] = "twin"
    TRANSFER_OK: ClassVar[bool] = True

    alpha: float = param(0.7, "weight of KL_soft (the twin's temperature-scaled posteriors)", UNIT)
    beta: float = param(0.2, "weight of CTC on the gold transcripts", UNIT)
    gamma: float = param(
        0.1, "weight of MSE_feat (chosen layers; a learned projection when widths differ)", UNIT
    )
    student_layers: str = param("", STUDENT_LAYERS_HELP)
    layer_map: str = param("", LAYER_MAP_HELP)
    temperatures: str = param(
        "4.0,3.5,3.0", "temperature schedule: one value per stage between milestones (comma list)"
    )
    milestones: str = param(
        "30,70", "epochs (of reference_epochs) where the temperature steps to its next value"
    )
    reference_epochs: int = param(
        80, "the run length the milestones are written for (rescaled to `epochs`)", POSITIVE
    )
    blank_frame_weight: float = param(BLANK_DEFAULT, BLANK_HELP, UNIT)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha + self.beta + self.gamma <= 0:
            raise KDSweepError("fields 'alpha', 'beta', 'gamma': at least one must be > 0")
        values, stones = self.schedule_values(), self.schedule_milestones()
        if any(t <= 0 for t in values):
            raise KDSweepError(f"field 'temperatures': every value must be > 0, got {values}")
        if len(values) != len(stones) + 1:
            raise KDSweepError(
                f"fields 'temperatures'/'milestones': need one more temperature than milestones, "
                f"got {len(values)} and {len(stones)}"
            )
        if stones != sorted(stones) or any(m < 1 for m in stones):
            raise KDSweepError(f"field 'milestones': must be increasing epochs >= 1, got {stones}")
        self.layer_pairs()  # raises on a bad selection, naming the field

    @property
    def needs(self) -> Needs:
        """The mapped twin layers when the MSE term is on, else none; a projection only when
        the twin (an imported `teacher_checkpoint`) is wider or narrower than the student."""
        if self.gamma <= 0:
            return Needs(logits=True)
        layers = tuple(t for _, t in self.layer_pairs())
        return Needs(logits=True, hidden_layers=layers, project=self.twin_hidden != self.hidden)

    @property
    def twin_hidden(self) -> int:
        return self.teacher_hidden if self.teacher_checkpoint else self.hidden

    def layer_pairs(self) -> list[tuple[int, int]]:
        """(student layer, twin layer) pairs, 1-based, that the MSE term matches."""
        twin_layers = self.teacher_layers if self.teacher_checkpoint else self.layers
        return layer_pairs(self.layers, twin_layers, self.student_layers, self.layer_map)

    def schedule_values(self) -> list[float]:
        return _floats(self.temperatures, "temperatures")

    def schedule_milestones(self) -> list[int]:
        return [int(x) for x in _floats(self.milestones, "milestones", ints=True)]

    def scaled_milestones(self) -> list[int]:
        return scale_milestones(self.schedule_milestones(), self.reference_epochs, self.epochs)

    def temperature_at(self, epoch: int) -> float:
        """Temperature of 0-based `epoch` (switches at each scaled milestone)."""
        return temperature_at(epoch, self.scaled_milestones(), self.schedule_values())


def _file_key(spec: str, field_name: str) -> tuple[str, float, int]:
    """(resolved path, mtime, size): the cache key of a file check (edits invalidate it)."""
    p = Path(spec).expanduser()
    target = p / "model.safetensors" if p.is_dir() else p
    if not target.is_file():
        raise KDSweepError(f"field {field_name!r}: file not found: {target}")
    st = target.stat()
    return str(p.resolve()), st.st_mtime, st.st_size


@functools.lru_cache(maxsize=32)
def _checked_lm(path: str, mtime: float, size: int) -> str:
    """The kind of an `lm` file; an ARPA is checked in full (once per file version)."""
    from kdsweep.speech.ngram import check_arpa, lm_kind

    kind = lm_kind(Path(path))
    if kind == "arpa":
        check_arpa(Path(path))
    return kind


@functools.lru_cache(maxsize=32)
def _imported_shape(path: str, mtime: float, size: int):
    """The shape of an imported checkpoint, fully loaded and checked against kdsweep's
    features and vocabulary (once per file version): a misfit fails as config input."""
    from kdsweep.speech.checkpoint_import import load_bilstm_ctc
    from kdsweep.speech.data import CharVocab

    return load_bilstm_ctc(path, N_MELS, len(CharVocab()))[1]


def layer_pairs(
    student_total: int, teacher_total: int, student_spec: str, teacher_spec: str
) -> list[tuple[int, int]]:
    """(student, teacher) 1-based layer pairs: `student_spec` picks student layers ("" = all),
    `teacher_spec` one teacher layer each ("" = uniform: s -> ceil(s * Lt / Ls))."""
    chosen = [int(x) for x in _floats(student_spec, "student_layers", ints=True)]
    if not chosen:
        chosen = list(range(1, student_total + 1))
    if any(not 1 <= s <= student_total for s in chosen) or len(set(chosen)) != len(chosen):
        raise KDSweepError(
            f"field 'student_layers': {student_spec!r} needs distinct layers in 1..{student_total}"
        )
    if not teacher_spec:
        return [(s, layer_map(student_total, teacher_total)[s - 1]) for s in chosen]
    picks = [int(x) for x in _floats(teacher_spec, "layer_map", ints=True)]
    if len(picks) != len(chosen) or not all(1 <= t <= teacher_total for t in picks):
        raise KDSweepError(
            f"field 'layer_map': {teacher_spec!r} needs {len(chosen)} teacher layer(s) (one per "
            f"student layer {chosen}) in 1..{teacher_total}"
        )
    return list(zip(chosen, picks, strict=True))


def _floats(spec: str, name: str, ints: bool = False) -> list[float]:
    try:
        out = [(int if ints else float)(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        kind = "ints" if ints else "numbers"
        raise KDSweepError(f"field {name!r}: {spec!r} is not a comma list of {kind}") from None
    return out
