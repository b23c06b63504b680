"""Bad input through the sweep CLI: one clear message, exit code 2, earlier results untouched.

Every case runs `driver.cli.main` (what `python sweeps/<name>.py ...` runs) in-process
against the storage folder and MLflow database of a finished earlier sweep, and checks:
- it exits with code 2 before Ray starts (Ray start is made to fail the test);
- stderr is one `error: ...` line naming the field and/or the file at fault;
- every file of the earlier sweep (results folder + MLflow database) is byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file
from sweep_helpers import run_sweep_script, sweep_env

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the earlier sweep
@pytest.fixture(scope="module")
def earlier(tmp_path_factory, cache_dir):
    """A finished smoke sweep whose files must survive every bad command below."""
    tmp = tmp_path_factory.mktemp("earlier")
    res = run_sweep_script("temperature", tmp, cache_dir, "epochs=1", "temperature=2", "--no-test")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp


def _snapshot(tmp: Path) -> dict[str, str]:
    files = [p for p in (tmp / "runs").rglob("*") if p.is_file()] + [tmp / "mlruns.db"]
    return {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ---------------------------------------------------------------- inputs the cases use
def _files(d: Path) -> dict[str, Path]:
    """Bad (and some good) input files, written once per module into `d`."""
    f = {}

    def put(name: str, text: str | bytes) -> None:
        p = d / name
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
        f[name] = p

    base = "task: text\ncondition: soft\n"
    put("syntax.yaml", base + "params: {temperature: [1, 2\n")
    put("top_key.yaml", base + "parms: {}\n")
    put("typo.yaml", base + "params: {temprature: 2}\n")
    put("wrong_type.yaml", base + "params: {lr: abc}\n")
    put("alpha_range.yaml", base + "params: {alpha: {grid: [0.5, 1.5]}}\n")
    put("temp_zero.yaml", base + "params: {temperature: 0}\n")
    put("empty_grid.yaml", base + "params: {alpha: {grid: []}}\n")
    put("bad_dist.yaml", base + "params: {lr: {loguniform: [0, 1]}}\n")
    put("condition.yaml", "task: text\ncondition: distill\n")
    put("task.yaml", "task: vision\ncondition: soft\n")
    put("student.yaml", base + "params: {student: L2-H130}\n")
    put("num_samples.yaml", base + "num_samples: 0\n")
    put("list.yaml", "- just\n- a list\n")
    put("empty.yaml", "")
    put("nested.yaml", base + "params: {optimizer: {name: adam, lr: 0.1}}\n")
    put("empty.csv", "")
    put("header_only.csv", "text,label\n")
    put("no_label.csv", "text,category\n" + "some text,a\n" * 20)
    put("binary.csv", bytes(range(256)) * 40)
    put("one_label.csv", "text,label\n" + "".join(f"text number {i},a\n" for i in range(30)))
    put("empty_text.csv", "text,label\nfine,a\n,b\nfine too,b\n")
    put(
        "unseen_dev_label.csv",
        "text,label,split\n"
        + "".join(f"t{i},{'ab'[i % 2]},train\n" for i in range(20))
        + "d1,c,dev\nd2,a,dev\nx1,a,test\nx2,b,test\n",
    )
    put("transfer_empty.txt", "\n\n")
    # speech: a manifest without the audio column, one with a missing file, one corrupt wav
    put("wav_noise.wav", os.urandom(3000))
    put("manifest_cols.csv", "file,transcript\na.wav,hello\n")
    put("manifest_missing.csv", "path,transcript\nnowhere.wav,hello\n")
    put("manifest_corrupt.csv", "path,transcript\nwav_noise.wav,hello\n")
    sf.write(d / "ok.wav", np.zeros(1600, dtype="float32"), 16000)
    put("manifest_ok.csv", "path,transcript\nok.wav,hello\n")
    # checkpoints: a folder without weights, one with corrupt weights, a file
    (d / "ckpt_empty").mkdir()
    (d / "ckpt_corrupt").mkdir()
    (d / "ckpt_corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    (d / "ckpt_corrupt" / "config.json").write_text(json.dumps({"student": "L2-H128"}))
    (d / "not_a_model").mkdir()
    (d / "ckpt_3_labels").mkdir()  # a student trained on a 3-label dataset (fortunes has 6)
    head = {
        "student.classifier.weight": torch.zeros(3, 128),
        "student.classifier.bias": torch.zeros(3),
    }
    save_file(head, str(d / "ckpt_3_labels" / "model.safetensors"))
    (d / "ckpt_3_labels" / "config.json").write_text(
        json.dumps({"student": "L2-H128", "dataset": "legal.csv"})
    )
    f.update({n: d / n for n in ("ckpt_empty", "ckpt_corrupt", "ckpt_3_labels", "not_a_model")})
    f.update(_own_models(d))
    return f


def _own_models(d: Path) -> dict[str, Path]:
    """Bring-your-own-model inputs (issue 14), built here (offline): pretrained-student dirs
    missing a part, a fine-tuned classifier for other labels, BiLSTM-CTC checkpoints that do not
    fit, a pickled checkpoint and a corrupt ARPA file."""
    from transformers import BertConfig, BertForSequenceClassification

    from kdsweep.speech.models import BiLSTMCTC

    (d / "student_no_tok").mkdir()
    (d / "student_no_tok" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (d / "student_no_config").mkdir()
    (d / "student_no_config" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "of"]
    conf = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32,
                      id2label={0: "spam", 1: "ham"}, label2id={"spam": 0, "ham": 1})  # fmt: skip
    BertForSequenceClassification(conf).save_pretrained(d / "teacher_2_labels")
    (d / "teacher_2_labels" / "vocab.txt").write_text("\n".join(vocab) + "\n")

    torch.manual_seed(0)
    speech = BiLSTMCTC(80, 16, 2, 29, 3, 0.0).state_dict()
    torch.save(BiLSTMCTC(80, 16, 2, 31, 3, 0.0).state_dict(), d / "asr_vocab31.pt")
    torch.save({**speech, "lstms.1.weight_hh_l0": torch.zeros(64, 8)}, d / "asr_shapes.pt")
    torch.save({"model": speech, "cls": BiLSTMCTC}, d / "asr_pickled.pt")  # not weights-only
    (d / "cut.arpa").write_text(
        "\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\tgo\n"
    )  # no \end\ line, fewer 1-grams than declared
    names = ("student_no_tok", "student_no_config", "teacher_2_labels", "asr_vocab31.pt",
             "asr_shapes.pt", "asr_pickled.pt", "cut.arpa")  # fmt: skip
    return {n: d / n for n in names}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("bad_inputs"))


# (id, sweep script, argv (with {name} = a file above), needles that stderr must contain)
CASES = [
    # ---- search-space YAML
    ("yaml-syntax", "temperature", ["--space", "{syntax.yaml}"], ["invalid YAML", "syntax.yaml"]),
    ("yaml-top-key", "temperature", ["--space", "{top_key.yaml}"], ["parms", "top_key.yaml"]),
    ("yaml-typo", "temperature", ["--space", "{typo.yaml}"], ["did you mean 'temperature'"]),
    ("yaml-type", "temperature", ["--space", "{wrong_type.yaml}"], ["'lr'", "wrong_type.yaml"]),
    ("yaml-range", "temperature", ["--space", "{alpha_range.yaml}"], ["alpha", "1.5"]),
    ("yaml-temp-0", "temperature", ["--space", "{temp_zero.yaml}"], ["temperature"]),
    ("yaml-empty-grid", "temperature", ["--space", "{empty_grid.yaml}"], ["alpha", "non-empty"]),
    ("yaml-dist", "temperature", ["--space", "{bad_dist.yaml}"], ["lr", "loguniform"]),
    ("yaml-condition", "temperature", ["--space", "{condition.yaml}"], ["distill"]),
    ("yaml-task", "temperature", ["--space", "{task.yaml}"], ["vision"]),
    ("yaml-student", "temperature", ["--space", "{student.yaml}"], ["student", "L2-H130"]),
    ("yaml-samples", "temperature", ["--space", "{num_samples.yaml}"], ["num_samples"]),
    ("yaml-list", "temperature", ["--space", "{list.yaml}"], ["mapping", "list.yaml"]),
    ("yaml-empty", "temperature", ["--space", "{empty.yaml}"], ["empty.yaml"]),
    ("yaml-nested", "temperature", ["--space", "{nested.yaml}"], ["optimizer"]),
    ("yaml-missing", "temperature", ["--space", "/nonexistent/space.yaml"], ["/nonexistent"]),
    # ---- command-line overrides
    ("alpha-range", "temperature", ["alpha=1.5"], ["alpha", "[0.0, 1.0]"]),
    ("alpha-negative", "alpha", ["alpha=-0.1"], ["alpha"]),
    ("unknown-key", "temperature", ["tempreture=2"], ["tempreture"]),
    ("no-equals", "temperature", ["alpha"], ["alpha", "key=value"]),
    ("epochs-0", "temperature", ["epochs=0", "--max-epochs", "0"], ["epochs"]),
    ("lr-negative", "temperature", ["lr=-0.1"], ["lr"]),
    ("batch-0", "temperature", ["batch_size=0"], ["batch_size"]),
    ("student", "compression", ["--student", "L2-H130"], ["student"]),
    ("condition", "temperature", ["condition=distill"], ["distill"]),
    ("gpus", "temperature", ["--gpus-per-trial", "-1"], ["gpu"]),
    ("resume-nothing", "temperature", ["--resume", "--name", "never-ran"], ["nothing to resume"]),
    (
        "resume-changed",
        "temperature",
        ["epochs=1", "temperature=4", "--resume"],
        ["temperature: 2 -> 4"],
    ),
    # ---- datasets (text)
    ("dataset-name", "temperature", ["dataset=imdbb"], ["dataset", "imdbb"]),
    ("csv-missing", "temperature", ["dataset=/nonexistent/legal.csv"], ["/nonexistent/legal.csv"]),
    ("csv-empty", "temperature", ["dataset={empty.csv}"], ["empty.csv"]),
    ("csv-header-only", "temperature", ["dataset={header_only.csv}"], ["header_only.csv"]),
    ("csv-no-label", "temperature", ["dataset={no_label.csv}"], ["no_label.csv", "label"]),
    ("csv-binary", "temperature", ["dataset={binary.csv}"], ["binary.csv"]),
    ("csv-one-label", "temperature", ["dataset={one_label.csv}"], ["one_label.csv", "label"]),
    ("csv-empty-text", "temperature", ["dataset={empty_text.csv}"], ["empty_text.csv", "row"]),
    ("csv-dev-label", "temperature", ["dataset={unseen_dev_label.csv}"], ["do not occur in train"]),
    ("teacher-dir", "alpha", ["--teacher", "{not_a_model}"], ["teacher", "config.json"]),
    ("transfer-missing", "transfer", ["transfer_set=/nonexistent/x.txt"], ["/nonexistent/x.txt"]),
    ("transfer-empty", "transfer", ["transfer_set={transfer_empty.txt}"], ["transfer_empty.txt"]),
    ("transfer-ratio", "transfer", ["transfer_ratio=-1"], ["transfer_ratio"]),
    # ---- checkpoints (cascade teacher_checkpoint)
    ("ckpt-no-dir", "cascade", ["teacher_checkpoint=/nonexistent/ckpt"], ["teacher_checkpoint"]),
    ("ckpt-no-weights", "cascade", ["teacher_checkpoint={ckpt_empty}"], ["model.safetensors"]),
    (
        "ckpt-corrupt",
        "cascade",
        ["teacher_checkpoint={ckpt_corrupt}"],
        ["teacher_checkpoint", "ckpt_corrupt", "load"],
    ),
    ("ckpt-labels", "cascade", ["teacher_checkpoint={ckpt_3_labels}"], ["3 labels", "legal.csv"]),
    # ---- speech
    (
        "corpus-missing",
        "temperature",
        ["--task", "asr", "corpus=/nonexistent/m.csv"],
        ["corpus", "/nonexistent"],
    ),
    (
        "manifest-cols",
        "temperature",
        ["--task", "asr", "corpus={manifest_cols.csv}"],
        ["manifest_cols.csv"],
    ),
    (
        "audio-missing",
        "temperature",
        ["--task", "asr", "corpus={manifest_missing.csv}"],
        ["nowhere.wav"],
    ),
    (
        "audio-corrupt",
        "temperature",
        ["--task", "asr", "corpus={manifest_corrupt.csv}"],
        ["wav_noise.wav"],
    ),
    ("milestones", "self_distill", ["milestones=3,2"], ["milestones"]),
    # ---- one's own models (issue 14)
    ("student-no-tok", "temperature", ["student={student_no_tok}"], ["student", "no tokenizer"]),
    (
        "student-no-config",
        "temperature",
        ["student={student_no_config}"],
        ["student", "student_no_config", "no config.json"],
    ),
    (
        "student-offline-hub",
        "temperature",
        ["student=nobody-here/no-such-model-kdsweep"],
        ["student", "no-such-model-kdsweep", "needs internet or a local copy"],
    ),
    (
        "teacher-offline-hub",
        "temperature",
        ["teacher=nobody-here/no-such-teacher-kdsweep"],
        ["teacher", "no-such-teacher-kdsweep", "needs internet or a local copy"],
    ),
    (
        "teacher-labels",
        "alpha",  # a sweep name the earlier sweep does not have: the data check is reached
        ["teacher={teacher_2_labels}", "teacher_epochs=0"],
        ["teacher", "spam", "computers"],
    ),
    (
        "asr-ckpt-vocab",
        "temperature",
        ["--task", "asr", "teacher_checkpoint={asr_vocab31.pt}"],
        ["teacher_checkpoint", "asr_vocab31.pt", "31 outputs", "29"],
    ),
    (
        "asr-ckpt-shapes",
        "temperature",
        ["--task", "asr", "teacher_checkpoint={asr_shapes.pt}"],
        ["teacher_checkpoint", "lstms.1.weight_hh_l0 (64, 8)"],
    ),
    (
        "asr-ckpt-pickled",
        "temperature",
        ["--task", "asr", "teacher_checkpoint={asr_pickled.pt}"],
        ["teacher_checkpoint", "asr_pickled.pt", "weights_only=True"],
    ),
    ("asr-lm-corrupt", "temperature", ["--task", "asr", "lm={cut.arpa}"], ["lm", "cut.arpa"]),
    ("self-weights", "self_distill", ["alpha=0", "beta=0", "gamma=0"], ["alpha"]),
]


def _argv(argv: list[str], files: dict[str, Path]) -> list[str]:
    out = []
    for a in argv:
        for name, path in files.items():
            a = a.replace("{" + name + "}", str(path))
        out.append(a)
    return out


@pytest.mark.unit
def test_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.e2e
@pytest.mark.parametrize("case, script, argv, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_and_keeps_earlier_results(
    case, script, argv, needles, earlier, files, cache_dir, monkeypatch, capsys
):
    import driver.cli as cli_mod
    import driver.run as run_mod

    def no_ray(*a, **k):
        raise AssertionError(f"{case}: bad input reached Ray")

    monkeypatch.setattr(run_mod, "init_ray", no_ray)
    monkeypatch.setenv("KDSWEEP_HOME", str(cache_dir))
    monkeypatch.chdir(earlier)
    before = _snapshot(earlier)
    cli = [
        *_argv(argv, files),
        "--smoke",
        "--storage",
        str(earlier / "runs"),
        "--mlflow-uri",
        f"sqlite:///{earlier / 'mlruns.db'}",
    ]
    with pytest.raises(SystemExit) as e:
        cli_mod.main(script, None, cli)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and "Traceback" not in err, err
    assert lines[-1].startswith("error:") or "error:" in lines[-1], err
    for needle in needles:
        assert needle in err, f"{case}: {needle!r} not in {err!r}"
    assert _snapshot(earlier) == before, f"{case}: earlier results changed"


@pytest.mark.e2e
def test_cli_bad_input_subprocess_has_no_traceback(tmp_path, cache_dir, files):
    """The same through a real process: what the user sees is one line, exit 2."""
    res = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python")
            if (ROOT / ".venv").is_dir()
            else shutil.which("python"),
            str(ROOT / "sweeps" / "temperature.py"),
            "--smoke",
            "--storage",
            str(tmp_path / "runs"),
            "--space",
            str(files["typo.yaml"]),
        ],
        env=sweep_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error:"), res.stderr
