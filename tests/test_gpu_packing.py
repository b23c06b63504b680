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
    """torch.cuda's memory API over a simulated card: step_fn calls .alloc()/.free()."""

    def __init__(self, total: int, used_by_others: int = 0) -> None:
        self.total, self.others = total, used_by_others
        self.allocated = self.reserved = self.peak_alloc = self.peak_reserved = 0
        self.calls: list[str] = []

    def is_available(self) -> bool:
        return True

    def alloc(self, n: int) -> None:
        reserved = max(self.reserved, (self.allocated + n) * 11 // 10)  # cached blocks reused
        if self.others + reserved > self.total:
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

    peak = gpu.probe_peak_memory(step, "cuda:0", cuda=card)
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
