"""Checkpoint averaging (issue 14, item 9): the weight average of state dicts, the selection
spec ("70,75,80", "last:3"), and `sweeps/decode.py --average` on a tiny speech trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ASR, needs_tts
from sweep_helpers import sweep_env

from kdsweep.averaging import average_state_dicts, check_spec, select_epochs
from kdsweep.errors import KDSweepError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# ---------------------------------------------------------------- average_state_dicts
@pytest.mark.unit
def test_average_is_the_exact_mean_in_each_dtype():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0, 3.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0, 4.0], dtype=torch.float16)}
    c = {"w": torch.tensor([5.0, 1.0]), "h": torch.tensor([3.0, 5.0], dtype=torch.float16)}
    avg = average_state_dicts([a, b, c])
    assert torch.equal(avg["w"], torch.tensor([3.0, 3.0]))
    assert avg["h"].dtype == torch.float16
    assert torch.equal(avg["h"], torch.tensor([2.0, 4.0], dtype=torch.float16))
    assert torch.equal(a["w"], torch.tensor([1.0, 2.0]))  # members untouched


@pytest.mark.unit
def test_average_takes_integer_and_bool_buffers_from_the_last_member():
    def member(w: float, n: int, flag: bool):
        return {
            "bn.weight": torch.full((2,), w),
            "bn.num_batches_tracked": torch.tensor(n, dtype=torch.long),
            "mask": torch.tensor([flag]),
        }

    avg = average_state_dicts(
        [member(1.0, 10, False), member(2.0, 20, False), member(6.0, 30, True)]
    )
    assert torch.equal(avg["bn.weight"], torch.full((2,), 3.0))
    assert avg["bn.num_batches_tracked"].dtype == torch.long
    assert int(avg["bn.num_batches_tracked"]) == 30
    assert avg["mask"].tolist() == [True]


@pytest.mark.unit
def test_average_of_a_real_model_loads_back():
    from kdsweep.speech.models import BiLSTMCTC

    torch.manual_seed(0)
    models = [BiLSTMCTC(n_mels=8, hidden=4, layers=2) for _ in range(2)]
    avg = average_state_dicts([m.state_dict() for m in models])
    target = BiLSTMCTC(n_mels=8, hidden=4, layers=2)
    target.load_state_dict(avg)
    states = [m.state_dict() for m in models]
    for key, value in target.state_dict().items():
        assert torch.allclose(value, (states[0][key] + states[1][key]) / 2), key


@pytest.mark.unit
def test_average_refuses_members_with_different_keys_or_shapes():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    with pytest.raises(KDSweepError, match=r"'b' is missing from member 1"):
        average_state_dicts([a, {"w": torch.zeros(2, 3)}])
    with pytest.raises(KDSweepError, match=r"'x' is only in member 2"):
        average_state_dicts([a, a, {**a, "x": torch.zeros(1)}])
    with pytest.raises(KDSweepError, match=r"'w' has shape \(3, 3\) in member 1 but \(2, 3\)"):
        average_state_dicts([a, {"w": torch.zeros(3, 3), "b": torch.zeros(3)}])
    with pytest.raises(KDSweepError, match="no checkpoints"):
        average_state_dicts([])


# ---------------------------------------------------------------- selection spec
@pytest.mark.unit
def test_explicit_epochs_are_selected_in_order():
    assert select_epochs("80,70,75", [60, 65, 70, 75, 80, 81]) == [70, 75, 80]
    assert select_epochs("70, 75", {70, 75}) == [70, 75]


@pytest.mark.unit
def test_last_k_takes_the_newest_kept_epochs():
    assert select_epochs("last:3", [81, 60, 70, 75, 80]) == [75, 80, 81]
    assert select_epochs("last:2", [1, 2]) == [1, 2]
    with pytest.raises(
        KDSweepError, match=r"asks for 3 checkpoints but only 2 are kept \(epochs 1, 2\)"
    ):
        select_epochs("last:3", [1, 2])


@pytest.mark.unit
def test_an_epoch_without_checkpoint_lists_the_available_ones():
    with pytest.raises(
        KDSweepError, match=r"no checkpoint of epoch 72; checkpoints kept: epochs 70, 75, 80"
    ):
        select_epochs("70,72", [80, 75, 70])


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec", ["", "last:", "last:x", "last:0", "70,,75", "70;75", "a,b", "0,5", "5,5", "-3"]
)
def test_bad_spec_syntax_is_refused(spec):
    with pytest.raises(KDSweepError, match="--average"):
        check_spec(spec)
    with pytest.raises(KDSweepError, match="--average"):
        select_epochs(spec, range(1, 100))


# ---------------------------------------------------------------- a trial's checkpoints
def _fake_trial(root: Path, epochs_by_dir: dict[str, int], layers: int = 1, hidden: int = 8):
    """checkpoint_* dirs as a trial writes them: student weights with the epoch in the header."""
    import json

    from safetensors.torch import save_file

    from kdsweep.speech.teacher import build_model

    states = {}
    for name, epoch in epochs_by_dir.items():
        torch.manual_seed(epoch)
        model = build_model(layers, hidden, 3, 0.0)
        state = {f"student.{k}": v.contiguous() for k, v in model.state_dict().items()}
        d = root / name
        d.mkdir(parents=True)
        save_file(state, str(d / "model.safetensors"), metadata={"epoch": str(epoch)})
        (d / "config.json").write_text(json.dumps({"layers": layers, "hidden": hidden}))
        states[name] = state
    return states


@pytest.mark.unit
def test_members_come_from_the_weights_header_not_the_dir_name(tmp_path):
    from driver.decode_average import select_members

    # Ray numbers checkpoint dirs from 0; a resumed trial can write one epoch twice
    _fake_trial(tmp_path, {"checkpoint_000000": 1, "checkpoint_000001": 2,
                           "checkpoint_000002": 3, "checkpoint_000003": 3})  # fmt: skip
    (tmp_path / "checkpoint_000009").mkdir()  # a half-deleted one: no weights
    members = select_members(tmp_path, "last:2")
    assert [(m.epoch, m.path.name) for m in members] == [
        (2, "checkpoint_000001"),
        (3, "checkpoint_000003"),
    ]
    assert [m.epoch for m in select_members(tmp_path / "checkpoint_000000", "1,3")] == [1, 3]
    with pytest.raises(KDSweepError, match="checkpoints kept: epochs 1, 2, 3"):
        select_members(tmp_path, "4")
    with pytest.raises(KDSweepError, match="no kdsweep checkpoint"):
        select_members(tmp_path / "checkpoint_000009", "last:1")


@pytest.mark.unit
def test_averaged_student_holds_the_mean_weights(tmp_path):
    from driver.decode_average import averaged_student, select_members

    states = _fake_trial(tmp_path, {"checkpoint_000001": 1, "checkpoint_000002": 2})
    model = averaged_student(select_members(tmp_path, "1,2"))
    a, b = states["checkpoint_000001"], states["checkpoint_000002"]
    for key, value in model.state_dict().items():
        assert torch.allclose(value, (a[f"student.{key}"] + b[f"student.{key}"]) / 2), key


# ---------------------------------------------------------------- through sweeps/decode.py
def _decode(*args: str, cache_dir: Path, cwd: Path, timeout: int = 600):
    return subprocess.run(
        [PY, str(ROOT / "sweeps" / "decode.py"), *args],
        env=sweep_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.mark.e2e
@needs_tts
def test_decode_average_prints_members_and_the_average(tmp_path, cache_dir):
    from trainables.speech.trainable import ASR_TRAINABLES

    independent = ASR_TRAINABLES["independent"]  # the record: a dict in, typed config built
    from trainables.tune_io import local_session

    torch.set_num_threads(1)
    trial = tmp_path / "trial"
    with local_session(trial):
        cfg = {**SMALL_ASR, "epochs": 3, "keep_every": 1, "cache_dir": str(cache_dir)}
        independent({**cfg, "eval_cmu": False})

    bad = _decode(
        str(trial), "--average", "last:two", cache_dir=cache_dir, cwd=tmp_path, timeout=120
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --average") and "last:two" in lines[0]
    assert "[kdsweep]" not in bad.stdout  # refused before any decoding
    missing = _decode(
        str(trial), "--average", "2,9", cache_dir=cache_dir, cwd=tmp_path, timeout=120
    )
    assert missing.returncode == 2 and "epochs 1, 2, 3" in missing.stderr, missing.stderr

    db = f"sqlite:///{tmp_path / 'mlruns.db'}"
    res = _decode(
        str(trial), "--average", "last:2", "--mlflow-uri", db, cache_dir=cache_dir, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("checkpoint "))
    assert "dev greedy WER" in out[head] and "test beam WER" in out[head]
    rows = out[head + 1 : head + 4]
    assert [r.split()[0] for r in rows] == ["epoch", "epoch", "average(2,3)"], out
    assert rows[0].startswith("epoch 2") and rows[1].startswith("epoch 3")
    for r in rows:
        wers = [float(x) for x in r.split()[-4:]]
        assert all(0.0 <= w <= 5.0 for w in wers), r

    from mlflow.tracking import MlflowClient

    client = MlflowClient(db)
    exp = client.get_experiment_by_name("kdsweep/decode")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["kind"] == "average"
    assert parents[0].data.params["epochs"] == "2,3"
    assert sorted(c.info.run_name for c in children) == ["average(2,3)", "epoch 2", "epoch 3"]
    assert all("test_wer_beam" in c.data.metrics for c in children)
