"""The CUDA paths of issue 22 that need real trial code (tiny models, on the CPU): checkpoints
written on a GPU, CUDA left alone by CPU trials, passes with their own batch size backing off,
the LR schedule under a skipping GradScaler, fp32 loads and attention KD compared like with
like. The simulated card of tests/test_gpu_packing.py covers the memory side."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import trainables.text.loop as loop
import trainables.text.trainable as text_mod
from kdsweep import epoch_resume, oom
from kdsweep.training import Precision, Stepper
from trainables.checkpointing import checkpoint_epoch, load_state, save_state
from trainables.registry import config_class
from trainables.tune_io import local_session

FAST = {"student": "L2-H128", "student_init": "random", "lr": 3e-3, "attribution_examples": 0}
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.fixture(autouse=True)
def _restore_threads_and_env():
    n, env = torch.get_num_threads(), os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    torch.set_num_threads(n)
    if env is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = env


class _Cfg:
    def to_dict(self) -> dict:
        return {"x": 1}


def _tiny_state():
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return model, opt, sched, torch.amp.GradScaler("cuda", enabled=False)


# ---------------------------------------------------------------- 1: CPU trials leave CUDA alone
@pytest.mark.unit
def test_saving_a_cpu_trial_never_asks_cuda_for_its_rng(monkeypatch, tmp_path):
    """`get_rng_state_all` initialises CUDA (a context on the card) in a CPU trial."""

    def touched(*a, **k):
        raise AssertionError("CUDA was initialised by a CPU trial")

    model, opt, sched, scaler = _tiny_state()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", touched)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", touched)
    save_state(tmp_path, model, opt, sched, scaler, 1, 0.5, _Cfg())
    assert load_state(tmp_path, model, opt, sched, scaler) == (1, 0.5)
    state = epoch_resume.rng_state()
    assert set(state) == {"cpu"}
    epoch_resume.set_rng_state({**state, "cuda": [torch.zeros(1, dtype=torch.uint8)]})


@pytest.mark.trial
def test_a_trial_with_no_gpu_share_hides_the_devices(small_text, tmp_path):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for zero-GPU tasks: the trial hides them."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    cfg = {**small_text, **FAST, "data_subset": 8, "batch_size": 8, "epochs": 1}
    with local_session(tmp_path / "s", gpus=0.0) as s:
        text_mod.TEXT_TRAINABLES["soft"](cfg)  # the record: a dict in, typed config built
    assert len(s.results) == 1
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # device=auto -> CPU, never the card


# ---------------------------------------------------------------- 2: GPU-written checkpoints
def _as_if_written_on_a_gpu(monkeypatch):
    """torch.save records each storage's device ('cuda:0' on a GPU): fake that tag."""
    import torch.serialization as ser

    monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:0")


@pytest.mark.unit
def test_a_checkpoint_written_on_a_gpu_loads_on_a_cpu_machine(monkeypatch, tmp_path):
    model, opt, sched, scaler = _tiny_state()
    with monkeypatch.context() as m:
        _as_if_written_on_a_gpu(m)
        save_state(tmp_path, model, opt, sched, scaler, 2, 1.5, _Cfg())
    with pytest.raises(RuntimeError, match="CUDA"):  # what a load without map_location does
        torch.load(tmp_path / "state.pt", weights_only=True)
    assert checkpoint_epoch(tmp_path) == 2
    assert load_state(tmp_path, model, opt, sched, scaler) == (2, 1.5)
    assert all(v.device.type == "cpu" for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v))  # fmt: skip


@pytest.mark.unit
def test_an_epoch_resume_written_on_a_gpu_loads_on_a_cpu_machine(monkeypatch, tmp_path):
    resume = epoch_resume.EpochResume(tmp_path / "partial")
    model, opt, *_ = _tiny_state()
    with monkeypatch.context() as m:
        _as_if_written_on_a_gpu(m)
        resume.save(1, model, {"optimizer": opt.state_dict()})
    assert resume.load(nn.Linear(3, 2))["epoch"] == 1


@pytest.mark.unit
def test_preparation_runs_in_a_child_process_when_it_will_use_a_gpu(monkeypatch):
    import driver.preparation as prep
    from driver.space import load_space

    calls = []
    monkeypatch.setattr(prep, "prepare_here", lambda space, log=print: {"in": "driver"})
    monkeypatch.setattr(prep, "run_isolated", lambda fn, *a, **k: calls.append(fn) or {"in": 1})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    space = load_space("temperature")
    assert prep.prepare(space) == {"in": 1} and calls == [prep.prepare_here]
    space.fixed["device"] = "cpu"  # device=cpu is honoured: no GPU, no child needed
    assert prep.prepare(space) == {"in": "driver"}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    del space.fixed["device"]
    assert prep.prepare(space) == {"in": "driver"} and len(calls) == 1


@pytest.mark.trial
def test_teacher_passes_run_on_the_configs_device(small_text, monkeypatch, tmp_path):
    import kdsweep.text.teacher_store as ts

    asked = []
    real = ts.pick_device
    monkeypatch.setattr(ts, "pick_device", lambda d="auto": asked.append(d) or real(d))
    cfg = loop.TextConfig.from_dict({**small_text, "device": "cpu"})
    data = loop.prepare_text(cfg, log=lambda m: None)
    tokens = {k: v[:4] for k, v in data.tokens["dev"].items()}
    data.teacher.transfer_logits(f"devcheck{os.getpid()}", tokens)
    assert asked == ["cpu"]


# ---------------------------------------------------------------- 3: passes with their own batch
@pytest.mark.trial
def test_dev_eval_oom_backs_off_on_its_own_batch(small_text, tmp_path, monkeypatch):
    cfg = {**small_text, **FAST, "data_subset": 16, "batch_size": 8, "epochs": 1}
    real, sizes = loop.predict_logits, []

    def eval_oom(model, tokens, batch_size, device):
        sizes.append(batch_size)
        if batch_size > 32:
            raise torch.cuda.OutOfMemoryError(OOM)
        return real(model, tokens, batch_size, device)

    monkeypatch.setattr(loop, "predict_logits", eval_oom)
    trial = tmp_path / "trial"
    with local_session(tmp_path / "a1", trial_dir=trial) as s:
        text_mod.TEXT_TRAINABLES["soft"](cfg)  # the record: a dict in, typed config built
    assert sizes == [128, 64, 32] and len(s.results) == 1
    assert not (trial / oom.STATE_FILE).exists()  # the training batch was not halved
    assert "oom_batch_size" not in s.results[0]


@pytest.mark.trial
def test_eval_that_never_fits_says_so_not_out_of_memory_at_batch_size_one(
    small_text, tmp_path, monkeypatch
):
    cfg = {**small_text, **FAST, "data_subset": 8, "batch_size": 8, "epochs": 1}

    def eval_oom(*a, **k):
        raise torch.cuda.OutOfMemoryError(OOM)

    monkeypatch.setattr(loop, "predict_logits", eval_oom)
    trial = tmp_path / "trial"
    with (
        local_session(tmp_path / "a1", trial_dir=trial),
        pytest.raises(oom.OutOfMemoryInPass, match="in dev eval even at batch size 1"),
    ):
        text_mod.TEXT_TRAINABLES["soft"](cfg)  # the record: a dict in, typed config built
    assert not (trial / oom.STATE_FILE).exists()


class _OOMAbove(nn.Module):
    """Wraps a model: CUDA out of memory for batches over `limit` rows (what fits the card)."""

    def __init__(self, model: nn.Module, limit: int):
        super().__init__()
        self.model, self.limit, self.config = model, limit, model.config
        self.rows: list[int] = []

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, **kw):
        self.rows.append(len(input_ids))
        if len(input_ids) > self.limit:
            raise torch.cuda.OutOfMemoryError(OOM)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw)


@pytest.mark.trial
def test_integrated_gradients_back_off_on_oom(small_text):
    from kdsweep.text.attribution import token_attributions

    cfg = loop.TextConfig.from_dict(small_text)
    data = loop.prepare_text(cfg, log=lambda m: None)
    teacher = data.teacher.load_model()
    tokens = data.tokens["dev"]
    want = token_attributions(teacher, tokens, n=4, steps=4, batch_size=4)
    small = _OOMAbove(teacher, limit=8)  # IG runs batch x steps rows at once: 16 do not fit
    got = token_attributions(small, tokens, n=4, steps=4, batch_size=4)
    assert max(small.rows) == 16 and torch.allclose(got, want, atol=1e-5)


@pytest.mark.trial
def test_teacher_features_back_off_and_free_the_cache(small_text, monkeypatch, tmp_path):
    import kdsweep.text.teacher_store as ts

    cfg = loop.TextConfig.from_dict(small_text)
    data = loop.prepare_text(cfg, log=lambda m: None)
    teacher = ts.StoredTeacher(data.teacher.path)
    load, wrapped, released = teacher.load_model, [], []

    def oom_model(eager_attention=False):
        wrapped.append(_OOMAbove(load(eager_attention), limit=16))
        return wrapped[-1]

    monkeypatch.setattr(teacher, "load_model", oom_model)
    monkeypatch.setattr(ts, "release_gpu_memory", lambda: released.append(1))
    tokens = data.tokens["dev"]  # 24 rows
    path = tmp_path / "feat.npy"
    teacher._build_features(path, "hidden", [1, 2], tokens)
    assert max(r for r in wrapped[0].rows if r <= 16) == 16 and released
    import numpy as np

    feats = np.load(path)
    assert feats.shape[:2] == (24, 2) and np.isfinite(feats).all()
    assert np.abs(feats.astype(np.float64)).sum() > 0


@pytest.mark.unit
def test_speech_passes_back_off_on_oom():
    from kdsweep.speech.data import FeatureSet
    from kdsweep.speech.models import BiLSTMCTC
    from kdsweep.speech.teacher import predict

    torch.manual_seed(0)
    model = BiLSTMCTC(n_mels=80, hidden=16, layers=2, vocab_size=29, stack=2)
    n = 10
    fs = FeatureSet([f"u{i}" for i in range(n)], [torch.randn(20 + i, 80) for i in range(n)],
                    [torch.tensor([1, 2])] * n, ["a b"] * n, ["v"] * n, ["dev"] * n)  # fmt: skip
    want_logits, want_hidden = predict(model, fs, torch.device("cpu"), 32, hidden_layers=[1])
    forward, rows = model.forward, []

    def oom_forward(x, *a, **k):
        rows.append(len(x))
        if len(x) > 3:
            raise torch.cuda.OutOfMemoryError(OOM)
        return forward(x, *a, **k)

    model.forward = oom_forward
    logits, hidden = predict(model, fs, torch.device("cpu"), 32, hidden_layers=[1])
    assert rows[0] == n and max(r for r in rows if r <= 3) <= 3  # full batch first, then less
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(logits, want_logits, strict=True))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(hidden, want_hidden, strict=True))


# ---------------------------------------------------------------- 8: fp32 loads
@pytest.mark.unit
def test_a_half_precision_checkpoint_loads_in_float32(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from kdsweep.text.models import load_classifier

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=3)  # fmt: skip
    BertForSequenceClassification(cfg).half().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
    model = load_classifier(str(tmp_path), 3)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---------------------------------------------------------------- 9: the LR schedule and fp16
@pytest.mark.unit
def test_the_schedule_does_not_step_when_the_scaler_skipped_the_optimizer_step():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # as fp16 on CUDA: enabled
    stepper = Stepper(model.parameters(), opt, sched, scaler)
    before = model.weight.detach().clone()
    stepper.backward(model(torch.tensor([[float("inf"), 1.0]])).sum())  # overflowed gradients
    assert torch.equal(model.weight, before)  # the scaler skipped the optimizer step ...
    assert sched.last_epoch == 0  # ... and the schedule did not advance
    stepper.backward(model(torch.ones(1, 2)).sum())
    assert not torch.equal(model.weight, before) and sched.last_epoch == 1


@pytest.mark.unit
def test_bf16_on_a_card_that_only_emulates_it_is_refused_in_the_trial(monkeypatch):
    from kdsweep.errors import KDSweepError

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(KDSweepError, match="field 'precision': bf16 needs a card with native"):
        Precision.of("bf16", torch.device("cuda"))
    assert Precision.of("bf16", torch.device("cpu")).dtype is None  # CPU: plain fp32


# ---------------------------------------------------------------- 10: attention KD like with like
@pytest.mark.trial
def test_attention_students_return_maps_without_attention_dropout(small_text):
    from transformers import AutoConfig

    cfg = loop.TextConfig.from_dict({**small_text, "dropout": 0.5})
    data = loop.prepare_text(cfg, log=lambda m: None)
    tcfg = AutoConfig.from_pretrained(data.teacher.model_dir)
    att = config_class("text", "attention").from_dict({**small_text, "dropout": 0.5})
    student, _ = loop._build_student(att, data, tcfg)
    student.train()
    ids = data.tokens["train"]["input_ids"][:4].long()
    mask = data.tokens["train"]["attention_mask"][:4].long()
    maps = student(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    # Softmax rows sum to 1, as the teacher's eval-mode rows do; after dropout they do not.
    assert all(torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5) for a in maps)
    assert student.config.hidden_dropout_prob == 0.5  # the rest of dropout stays
    soft, _ = loop._build_student(loop.TextConfig.from_dict(cfg.to_dict()), data, tcfg)
    assert soft.config.attention_probs_dropout_prob == 0.5  # other conditions: unchanged
