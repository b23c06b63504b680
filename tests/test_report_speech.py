"""sweeps/report.py on a fake speech sweep in MLflow: beam WER next to greedy, the teacher and
twin rows, the teacher's seconds amortised per teacher, the budget check and the gain chart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps import report  # noqa: E402

pytestmark = pytest.mark.trial

TEACHER_TAGS = {
    "teacher_id": "t1", "teacher_arch": "L4-H256", "teacher_dev_wer": "0.2000",
    "teacher_dev_wer_beam": "0.1500", "teacher_dev_cer": "0.0800",
    "teacher_dev_cer_beam": "0.0700", "teacher_train_seconds": "90.0",
    "twin_id": "w1", "twin_arch": "L2-H128", "twin_dev_wer": "0.4000",
    "twin_dev_wer_beam": "0.3500", "twin_train_seconds": "30.0",
}  # fmt: skip


def _store(tmp_path: Path) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("kdsweep/fake-asr", artifact_location=tmp_path.as_uri())
    tags = {"task": "asr", **TEACHER_TAGS}
    parent = client.create_run(exp, run_name="fake-asr", tags=tags).info.run_id
    # (condition, WER offset, seeds, epochs run, pruned)
    arms = [("independent", 0.0, 3, 4, False), ("soft", -0.05, 3, 4, False)]
    arms += [("self", -0.01, 3, 4, False), ("soft", 0.2, 1, 1, True)]
    noise = [0.0, 0.01, -0.008]
    for cond, gain, seeds, epochs, pruned in arms:
        for seed in range(seeds):
            seed += 3 if pruned else 0
            run_tags = {"mlflow.parentRunId": parent, "condition": cond, "student": "L2-H128"}
            if pruned:
                run_tags["stopped_by"] = "asha"
            run = client.create_run(exp, run_name=f"{cond} s{seed}", tags=run_tags).info.run_id
            params = {"condition": cond, "student": "L2-H128", "seed": seed, "task": "asr"}
            wer = 0.5 + gain + noise[seed % 3] * (1.2 if cond != "independent" else 1.0)
            last = {"dev_wer": wer, "dev_cer": wer / 3, "dev_wer_beam": wer - 0.05}
            last.update(dev_cer_beam=wer / 3 - 0.01, train_seconds=100.0, epoch=epochs)
            last.update(steps_per_epoch=10, params=1e6)
            client.log_batch(
                run,
                params=[Param(k, str(v)) for k, v in params.items()],
                metrics=[Metric(k, float(v), 0, epochs) for k, v in last.items()],
                tags=[RunTag("epochs_run", str(epochs))],
            )
            client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def _row(md: str, start: str) -> dict[str, str]:
    lines = md.splitlines()
    head = next(ln for ln in lines if ln.startswith("| student |"))
    row = next(ln for ln in lines if ln.startswith(start))
    return dict(zip(head.strip("|").split(" | "), row.strip("|").split(" | ")))


def test_speech_report_beam_teacher_rows_budgets_and_gain(tmp_path):
    uri = _store(tmp_path)
    out = tmp_path / "report"
    assert report.main(["fake-asr", "--mlflow-uri", uri, "--out", str(out), "--no-log"]) == 0
    md = (out / "report.md").read_text()
    assert "| n | WER | WER beam | CER | CER beam | attr cos |" in md
    teacher = _row(md, "| L4-H256 | (teacher) |")
    assert (teacher["WER"], teacher["WER beam"], teacher["train s"].strip()) == (
        "0.200", "0.150", "90.0"
    )  # fmt: skip
    twin = _row(md, "| L2-H128 | (twin) |")
    assert (twin["WER"], twin["WER beam"], twin["CER"]) == ("0.400", "0.350", "–")
    # own 100 s + the teacher's 90 s over the 4 trials that learned from it (one pruned);
    # self distillation: + the twin's 30 s over its 3 trials; independent: its own 100 s
    cost = "train s (incl. teacher)"
    assert _row(md, "| L2-H128 | soft |")[cost].startswith("122.5")
    assert _row(md, "| L2-H128 | self |")[cost].startswith("110.0")
    assert _row(md, "| L2-H128 | independent |")[cost].startswith("100.0")
    assert "the teacher's training (90 s) / 4 trial(s) that used it" in md
    assert "budgets: equal (4 epochs, 40 steps each)" in md
    assert (
        "- soft s3 (pruned, not counted): ran 1 epoch, 10 steps; independent L2-H128: "
        "4 epochs, 40 steps" in md
    )
    assert "](gain_vs_baseline.png)" in md and (out / "gain_vs_baseline.png").is_file()
    assert not (out / "attribution_similarity.png").exists()  # speech: no attributions
