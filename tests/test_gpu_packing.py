"""GPU packing by memory and OOM recovery, against a simulated device (no GPU needed)."""

from __future__ import annotations

import json

import pytest
import torch

from kdsweep import gpu, oom
from kdsweep.errors import KDSweepError

pytestmark = pytest.mark.unit

GiB = 2**30


class FakeCuda:
    """torch.cuda over a simulated card: its memory API (step_fn calls .alloc()/.free()), the
    per-process cap, and what the start-up check reads (capability, arch list, bf16)."""

    def __init__(
        self,
        total: int,
        used_by_others: int = 0,
        capability: tuple[int, int] = (8, 6),
        arch_list: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
        name: str = "NVIDIA GeForce RTX 3090",
    ) -> None:
        self.total, self.others = total, used_by_others
        self.allocated = self.reserved = self.peak_alloc = self.peak_reserved = 0
        self.calls: list[str] = []
        self.capability, self.arch_list, self.name = capability, list(arch_list), name
        self.cap: int | None = None  # set_per_process_memory_fraction x total

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def get_device_name(self, i=0) -> str:
        return self.name

    def get_device_capability(self, i=0) -> tuple[int, int]:
        return self.capability

    def get_arch_list(self) -> list[str]:
        return self.arch_list

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return self.capability >= (8, 0) or including_emulation

    def get_device_properties(self, i=0):
        return type("Props", (), {"total_memory": self.total})()

    def set_per_process_memory_fraction(self, fraction: float, device=None) -> None:
        self.cap = int(fraction * self.total)

    def alloc(self, n: int) -> None:
        reserved = max(self.reserved, (self.allocated + n) * 11 // 10)  # cached blocks reused
        if self.others + reserved > self.total or (self.cap is not None and reserved > self.cap):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} bytes")
        self.allocated += n
        self.reserved = reserved  # the caching allocator rounds up 10 %
        self.peak_alloc = max(self.peak_alloc, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, n: int) -> None:
        self.allocated -= n  # stays reserved (cached), like the real allocator

    def synchronize(self, device=None) -> None:
        self.calls.append("sync")

    def empty_cache(self) -> None:
        self.reserved = self.allocated * 11 // 10

    def reset_peak_memory_stats(self, device=None) -> None:
        self.calls.append("reset")
        self.peak_alloc, self.peak_reserved = self.allocated, self.reserved

    def max_memory_allocated(self, device=None) -> int:
        return self.peak_alloc

    def max_memory_reserved(self, device=None) -> int:
        return self.peak_reserved

    def memory_reserved(self, device=None) -> int:
        return self.reserved

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return self.total - self.others - self.reserved, self.total


# ---------------------------------------------------------------- probe
def test_probe_counts_the_step_peak_reserved_and_the_cuda_context():
    card = FakeCuda(total=24 * GiB)
    card.alloc(GiB)  # model + optimizer, already on the card
    seen = []

    def step():  # activations of a forward/backward, freed after the step
        card.alloc(GiB)
        card.free(GiB)
        seen.append(1)

    peak = gpu.probe_peak_memory(step, "cuda:0", cuda=card, context_bytes=gpu.CUDA_CONTEXT_BYTES)
    assert len(seen) == 2  # two steps: Adam's state appears in the first
    assert card.calls[:2] == ["sync", "reset"]
    # model (1 GiB) + activations (1 GiB), reserved 10 % more, + the context estimate
    assert peak == 2 * GiB * 11 // 10 + gpu.CUDA_CONTEXT_BYTES


def test_probe_without_cuda_is_a_clear_error():
    class NoCuda:
        def is_available(self):
            return False

    with pytest.raises(KDSweepError, match="no CUDA device"):
        gpu.probe_peak_memory(lambda: None, cuda=NoCuda())


def test_device_memory_reports_free_and_total():
    card = FakeCuda(total=8 * GiB, used_by_others=GiB)
    card.alloc(GiB)
    free, total = gpu.device_memory(cuda=card)
    assert total == 8 * GiB and free == 8 * GiB - GiB - GiB * 11 // 10


# ---------------------------------------------------------------- plan_packing
def test_plan_fits_as_many_as_the_free_memory_less_margin():
    plan = gpu.plan_packing(int(2.1 * GiB), free_bytes=23 * GiB, total_bytes=24 * GiB)
    # usable 23 - 2.4 = 20.6 GiB -> 9 trials of 2.1 GiB
    assert plan.n_trials == 9
    assert plan.message == "9 trials x 2.1 GiB on a 24 GiB card"
    assert plan.n_trials * plan.share <= 1 and (plan.n_trials + 1) * plan.share > 1


def test_plan_message_style_and_cap():
    plan = gpu.plan_packing(int(2.1 * GiB), 23 * GiB, 24 * GiB, max_trials=4)
    assert (plan.n_trials, plan.share) == (4, 0.25)
    assert plan.message == "4 trials x 2.1 GiB on a 24 GiB card"
    one = gpu.plan_packing(6 * GiB, 8 * GiB, 8 * GiB)
    assert one.message == "1 trial x 6.0 GiB on a 8 GiB card" and one.share == 1.0


def test_plan_three_trials_share_fits_ray():
    plan = gpu.plan_packing(3 * GiB, 11 * GiB, 11 * GiB, margin=0.0)
    assert plan.n_trials == 3 and plan.share == 0.3333  # 3 x 0.3333 <= 1


def test_plan_other_processes_count_against_free():
    card = FakeCuda(total=8 * GiB, used_by_others=5 * GiB)  # a desktop, a browser...
    free, total = gpu.device_memory(cuda=card)
    assert gpu.plan_packing(GiB, free, total).n_trials == 2  # (3 - 0.8) GiB // 1 GiB


def test_plan_nothing_fits_is_a_clear_error():
    with pytest.raises(KDSweepError, match=r"one trial needs 9\.0 GiB .* 8 GiB card"):
        gpu.plan_packing(9 * GiB, 8 * GiB, 8 * GiB)


# ---------------------------------------------------------------- check_share
def test_check_share_accepts_what_fits():
    assert gpu.check_share(0.25, 2 * GiB, 24 * GiB) == 4
    assert gpu.check_share(1, 20 * GiB, 24 * GiB) == 1
    assert gpu.check_share(2, 20 * GiB, 24 * GiB) == 1  # whole GPUs: one trial per card


def test_check_share_that_cannot_fit_names_the_flag_and_a_fix():
    with pytest.raises(KDSweepError) as e:
        gpu.check_share(0.25, 6 * GiB, 24 * GiB, free_bytes=22 * GiB)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("--gpus-per-trial 0.25: 4 trial(s) x 6.0 GiB = 24.0 GiB do not fit")
    assert "a share of at least 0.333 (3 at a time)" in msg


def test_check_share_zero_is_an_error():
    with pytest.raises(KDSweepError, match="must be > 0"):
        gpu.check_share(0, GiB, 24 * GiB)


def test_run_isolated_returns_and_reraises():
    assert gpu.run_isolated(divmod, 7, 2) == (3, 1)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        gpu.run_isolated(divmod, 1, 0)


# ---------------------------------------------------------------- OOM
def test_is_cuda_oom():
    assert oom.is_cuda_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert oom.is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.is_cuda_oom(RuntimeError("CUDA error: out of memory"))
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except RuntimeError as inner:
            raise ValueError("batch 3 failed") from inner
    except ValueError as wrapped:
        assert oom.is_cuda_oom(wrapped)
    assert not oom.is_cuda_oom(RuntimeError("shape mismatch"))
    assert not oom.is_cuda_oom(MemoryError("host memory"))  # CPU OOM: not recoverable this way


def test_halve_batch_keeps_the_effective_batch():
    assert oom.halve_batch(32, 1) == (16, 2)
    assert oom.halve_batch(16, 2) == (8, 4)
    with pytest.raises(oom.OutOfMemoryAtBatchOne, match="^out of memory at batch size 1"):
        oom.halve_batch(1, 32)
    with pytest.raises(KDSweepError, match="batch_size"):
        oom.halve_batch(0, 1)
    with pytest.raises(KDSweepError, match="grad_accum"):
        oom.halve_batch(8, 0)


def train_until_fit(card: FakeCuda, trial_dir, batch_size: int, per_example: int) -> list:
    """One simulated trial with Tune-style retries: OOM -> record, release, re-raise -> retry."""
    attempts = []
    for _ in range(10):  # FailureConfig(max_failures=...) retries
        bs, accum = oom.resume_batch(trial_dir, batch_size, 1)
        attempts.append((bs, accum))
        try:
            card.alloc(bs * per_example)  # one step's activations
            card.free(bs * per_example)
            return attempts
        except Exception as exc:
            if not oom.is_cuda_oom(exc):
                raise
            oom.record_oom(trial_dir, bs, accum, exc, epoch=2)
            card.empty_cache()  # stands in for release_gpu_memory()
    raise AssertionError("never fitted")


def test_injected_oom_halves_until_it_fits_and_records_it(tmp_path):
    card = FakeCuda(total=10 * GiB)
    attempts = train_until_fit(card, tmp_path, batch_size=32, per_example=GiB)  # fits at 8
    assert attempts == [(32, 1), (16, 2), (8, 4)]
    state = oom.load_oom_state(tmp_path)
    assert (state.batch_size, state.grad_accum, state.effective_batch) == (8, 4, 32)
    assert [h["batch_size"] for h in state.history] == [32, 16]
    assert state.history[0]["error"].startswith("CUDA out of memory")
    assert oom.oom_tags(state) == {
        "oom_recoveries": 2,
        "oom_batch_size": 8,
        "oom_grad_accum": 4,
        "oom_from_batch_size": 32,
    }
    assert oom.oom_tags(None) == {}


def test_oom_at_batch_size_one_ends_with_that_reason(tmp_path):
    card = FakeCuda(total=GiB)
    with pytest.raises(oom.OutOfMemoryAtBatchOne, match="out of memory at batch size 1"):
        train_until_fit(card, tmp_path, batch_size=4, per_example=2 * GiB)
    state = oom.load_oom_state(tmp_path)
    assert state.gave_up.startswith("out of memory at batch size 1")
    assert oom.oom_tags(state)["error"].startswith("out of memory at batch size 1")
    with pytest.raises(oom.OutOfMemoryAtBatchOne):  # a further retry gives up at once
        oom.resume_batch(tmp_path, 4, 1)


def test_resume_batch_without_record_and_bad_records(tmp_path):
    assert oom.resume_batch(tmp_path, 32, 1) == (32, 1)
    with pytest.raises(KDSweepError, match="batch_size"):
        oom.resume_batch(tmp_path, 0, 1)
    (tmp_path / oom.STATE_FILE).write_text('{"batch_size": 16, "grad')  # truncated
    with pytest.raises(KDSweepError, match="oom_state.json: not a valid OOM record"):
        oom.resume_batch(tmp_path, 32, 1)
    (tmp_path / oom.STATE_FILE).write_text(json.dumps({"batch_size": 0, "grad_accum": 2}))
    with pytest.raises(KDSweepError, match="not a valid OOM record"):
        oom.load_oom_state(tmp_path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    oom.save_oom_state(tmp_path, oom.OOMState(8, 4))
    assert [p.name for p in tmp_path.iterdir()] == [oom.STATE_FILE]
    assert oom.load_oom_state(tmp_path).effective_batch == 32


def test_release_gpu_memory_runs_without_cuda():
    oom.release_gpu_memory()  # gc only here; must not touch CUDA when there is none
    assert not torch.cuda.is_initialized()


# ---------------------------------------------------------------- issue 22 (first contact)
def test_probe_steps_until_the_optimizer_holds_its_state():
    """fp16: the GradScaler skips steps whose gradients overflowed, and AdamW allocates its
    moments only at the first step taken; the probe must measure a step after that."""
    card = FakeCuda(total=24 * GiB)
    state = {"steps": 0, "moments": 0}

    def step():  # the first 3 steps overflow (skipped); the 4th allocates Adam's 2 GiB
        state["steps"] += 1
        if state["steps"] == 4:
            card.alloc(2 * GiB)
            state["moments"] = 2 * GiB
        card.alloc(GiB)  # activations
        card.free(GiB)

    peak = gpu.probe_peak_memory(
        step, cuda=card, ready=lambda: state["moments"] > 0, context_bytes=0
    )
    assert state["steps"] == 5  # until the state exists, then one step with it
    assert peak >= 3 * GiB  # moments + activations, not the 1 GiB of the skipped steps


def test_probe_that_never_steps_is_a_clear_error():
    card = FakeCuda(total=24 * GiB)
    with pytest.raises(KDSweepError, match="took no step in 8 steps"):
        gpu.probe_peak_memory(lambda: None, cuda=card, ready=lambda: False, max_steps=8)


def test_the_cuda_context_is_measured_when_the_driver_says_what_the_process_uses():
    assert gpu.context_memory(GiB, used_fn=lambda: GiB + 300 * 2**20) == 300 * 2**20
    assert gpu.context_memory(GiB, used_fn=lambda: None) == 0  # unknown: the caller's estimate
    card = FakeCuda(total=24 * GiB)
    peak = gpu.probe_peak_memory(lambda: card.alloc(0), cuda=card)  # no nvidia-smi here
    assert peak >= gpu.CUDA_CONTEXT_BYTES  # the estimate, never nothing


def test_zero_share_hides_the_gpu_and_a_share_caps_the_allocator():
    env: dict = {}
    assert gpu.setup_trial_device(0.0, environ=env) == "hidden"
    assert env == {"CUDA_VISIBLE_DEVICES": ""}  # device=auto then picks the CPU
    env, card = {}, FakeCuda(total=24 * GiB)
    assert gpu.setup_trial_device(0.25, environ=env, cuda=card).startswith("limited to")
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert card.cap == pytest.approx(6 * GiB - gpu.CUDA_CONTEXT_BYTES, rel=1e-6)
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}  # the user's setting stays
    gpu.setup_trial_device(1.0, environ=env, cuda=FakeCuda(total=24 * GiB))
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    env = {}
    assert gpu.setup_trial_device(None, environ=env) == "unchanged" and env == {}


def test_a_trial_over_its_share_is_the_one_that_runs_out_of_memory():
    """Four trials at 0.25 of a 24 GiB card: the one that grows past its 6 GiB share gets the
    OOM (and backs off) while the card still has room for its neighbours."""
    card = FakeCuda(total=24 * GiB)
    gpu.setup_trial_device(0.25, environ={}, cuda=card)
    card.alloc(4 * GiB)  # within its share
    with pytest.raises(torch.cuda.OutOfMemoryError):
        card.alloc(2 * GiB)  # 6.6 GiB reserved > 5.5 GiB cap, though the card has 18 GiB free
    assert card.others + card.reserved < card.total / 2


def test_the_card_is_checked_against_the_torch_build():
    assert gpu.arch_supported((8, 6), ["sm_80"])  # same major, newer minor: the cubin runs
    assert gpu.arch_supported((8, 9), ["sm_75", "sm_80", "sm_86"])
    assert not gpu.arch_supported((6, 1), ["sm_75", "sm_80", "sm_86", "sm_90"])
    assert not gpu.arch_supported((7, 0), ["sm_75"])  # Volta: older than every kernel
    assert gpu.arch_supported((9, 0), ["sm_80", "compute_80"])  # PTX compiles for newer
    assert not gpu.arch_supported((10, 0), ["sm_90a"])  # arch-specific: exactly 9.0 only
    line = gpu.check_cuda_build(["fp32", "bf16"], cuda=FakeCuda(24 * GiB))
    assert line.startswith("GPU 0 NVIDIA GeForce RTX 3090 (sm_86): supported")
    pascal = FakeCuda(11 * GiB, capability=(6, 1), name="NVIDIA GeForce GTX 1080 Ti")
    with pytest.raises(KDSweepError) as e:
        gpu.check_cuda_build(["fp32"], cuda=pascal)
    msg = str(e.value)
    assert "\n" not in msg and "GTX 1080 Ti, sm_61" in msg and "sm_75, sm_80" in msg
    assert "KDSWEEP_TORCH_INDEX=https://download.pytorch.org/whl/cu126" in msg


def test_bf16_on_a_card_that_only_emulates_it_is_an_error():
    turing = FakeCuda(16 * GiB, capability=(7, 5), name="Tesla T4")
    assert gpu.check_cuda_build(["fp32", "fp16"], cuda=turing).startswith("GPU 0 Tesla T4")
    with pytest.raises(KDSweepError, match="field 'precision': bf16 needs .* use fp16 or fp32"):
        gpu.check_cuda_build(["bf16"], cuda=turing)


def test_a_gpu_torch_cannot_use_is_said_not_silent():
    class OldDriver:
        def is_available(self):
            return False

    assert "nvidia-smi sees a GPU" in gpu.check_cuda_build([], cuda=OldDriver(), has_smi=True)
    assert gpu.check_cuda_build([], cuda=OldDriver(), has_smi=False) == ""


def test_oom_backoff_keeps_the_effective_batch_for_any_batch_size():
    chain, state = [], (24, 1)
    while True:
        chain.append(state)
        try:
            state = oom.halve_batch(*state)
        except oom.OutOfMemoryAtBatchOne:
            break
    assert chain == [(24, 1), (12, 2), (6, 4), (3, 8), (1, 24)]  # not 1 x 16
    assert all(b * a == 24 for b, a in chain)
    assert oom.halve_batch(48, 1) == (24, 2) and oom.halve_batch(5, 3) == (1, 15)
    assert len(chain) - 1 <= 5  # within the retries tuner.max_failures allows (log2)


def test_a_pass_with_its_own_batch_backs_off_without_touching_the_training_batch():
    seen = []

    def run(bs):
        seen.append(bs)
        if bs > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return bs

    assert oom.backoff(run, 128, "dev eval") == 16 and seen == [128, 64, 32, 16]

    def never(bs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")

    with pytest.raises(oom.OutOfMemoryInPass, match="out of memory in dev eval even at batch"):
        oom.backoff(never, 4, "dev eval")
    try:
        oom.backoff(never, 4, "dev eval")
    except oom.OutOfMemoryInPass as e:  # not a training-batch OOM: no halving, no false
        assert not oom.is_cuda_oom(e)  # "out of memory at batch size 1"
    with pytest.raises(ValueError):  # other errors pass through at once
        oom.backoff(lambda bs: int("x"), 8, "dev eval")
