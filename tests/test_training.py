"""The shared training step (kdsweep/training.py): accumulation, clipping, finite check, AMP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsweep.config import BaseConfig
from kdsweep.errors import KDSweepError, NonFiniteLossError
from kdsweep.train_utils import warmup_linear
from kdsweep.training import Precision, Stepper, check_finite, optimizer_steps, torch_threads

pytestmark = pytest.mark.unit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))  # no dropout


def _train(batch_size: int, grad_accum: int, x, y, grad_clip: float = 0.0, epochs: int = 1):
    """Train on (x, y) in order; returns (model, optimizer steps, LR-scheduler steps)."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    micro = -(-len(x) // batch_size)
    sched = warmup_linear(opt, epochs * optimizer_steps(micro, grad_accum), 0.0)
    scaler = Precision.of("fp32", torch.device("cpu")).scaler
    stepper = Stepper(model.parameters(), opt, sched, scaler, grad_clip, grad_accum)
    steps = 0
    for _ in range(epochs):
        for i in range(0, len(x), batch_size):
            loss = nn.functional.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size])
            before = stepper.pending
            stepper.backward(loss)
            steps += stepper.pending < before + 1
        steps += stepper.pending > 0
        stepper.flush()
    return model, steps, sched.last_epoch


def _data(n: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _close(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_accumulating_two_batches_of_8_is_one_batch_of_16(grad_clip):
    x, y = _data(32)
    big, big_steps, big_sched = _train(16, 1, x, y, grad_clip, epochs=2)
    acc, acc_steps, acc_sched = _train(8, 2, x, y, grad_clip, epochs=2)
    _close(big, acc)
    assert big_steps == acc_steps == big_sched == acc_sched == 4
    # ... and it really trained (not two copies of the initial weights)
    assert not torch.allclose(next(big.parameters()), next(_model().parameters()))


def test_same_gradients_before_the_step():
    x, y = _data(16)
    a, b = _model(), _model()
    nn.functional.cross_entropy(a(x), y).backward()
    for i in (0, 8):
        (nn.functional.cross_entropy(b(x[i : i + 8]), y[i : i + 8]) / 2).backward()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_a_partial_last_group_is_applied_at_the_epoch_end():
    x, y = _data(24)  # 3 micro-batches of 8, grad_accum 2: steps after batch 2 and at flush
    _, steps, sched_steps = _train(8, 2, x, y)
    assert steps == sched_steps == optimizer_steps(3, 2) == 2


def test_grad_accum_1_is_the_plain_step_bit_for_bit():
    x, y = _data(16)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = warmup_linear(opt, 2, 0.0)
    for i in (0, 8):  # the loop every trainer had before the shared step
        nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    stepped, _, _ = _train(8, 1, x, y, grad_clip=1.0)
    for p, q in zip(model.parameters(), stepped.parameters(), strict=True):
        assert torch.equal(p, q)


def test_check_finite_names_component_epoch_and_step():
    ok = torch.tensor(1.0)
    check_finite(ok, {"loss_ce": ok}, 1, 0)
    bad = torch.tensor(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"at epoch 3 step 7: component\(s\) loss_kd;"):
        check_finite(bad, {"loss_ce": ok, "loss_kd": bad}, 3, 7)
    with pytest.raises(NonFiniteLossError, match=r"^teacher: non-finite .* component\(s\) loss"):
        check_finite(bad, {}, 1, 0, "teacher")


def test_precision_on_the_cpu_is_plain_fp32():
    for precision in ("fp32", "bf16", "fp16"):
        amp = Precision.of(precision, torch.device("cpu"))
        assert amp.dtype is None and not amp.scaler.is_enabled()


def test_grad_accum_is_a_checked_config_field():
    cfg = BaseConfig.from_dict({"batch_size": 8, "grad_accum": 4})
    assert cfg.effective_batch_size == 32
    assert BaseConfig().grad_accum == 1
    with pytest.raises(KDSweepError, match="field 'grad_accum' must be in"):
        BaseConfig.from_dict({"grad_accum": 0})
    with pytest.raises(ValueError, match="grad_accum"):
        Stepper([], None, None, None, 0.0, 0)


def test_torch_threads_restores_the_count():
    n = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n


def test_micro_step_sums_components_and_end_epoch_means_them():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = warmup_linear(opt, 10, 0.0)
    scaler = Precision.of("fp32", torch.device("cpu")).scaler
    stepper = Stepper(model.parameters(), opt, sched, scaler, 0.0, grad_accum=2)
    x = torch.randn(3, 6)
    for step, kd in enumerate((1.0, 3.0, 5.0)):
        loss = model(x).pow(2).mean()
        stepper.micro_step(loss, {"loss_kd": torch.tensor(kd)}, epoch=0, step=step)
    means = stepper.end_epoch()
    assert means["loss_kd"] == pytest.approx(3.0) and stepper.pending == 0
    assert stepper.end_epoch() == {}  # reset for the next epoch
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 step 4: component\(s\) loss_kd"):
        stepper.micro_step(torch.tensor(float("nan")), {"loss_kd": torch.tensor(float("nan"))},
                           epoch=1, step=4)  # fmt: skip
