"""Pretrained students: each fine-tuned independently and with soft KD from the teacher.

python sweeps/pretrained.py --seeds 3          # the YAML's `student` list x {independent, soft}
python sweeps/pretrained.py --seeds 3 --smoke
python sweeps/report.py <sweep name>           # params, size, accuracy +- CI, KD gain +- CI

Every student gets the same budget (epochs, lr, batch) in both arms; `student` is the grouping
key of the report, so each model's soft-KD arm is paired (by seed) with its own independent arm:
the "does re-distilling an already compressed model help?" question, one row per model.
A student is a model directory or hub name (its own tokenizer); `shipped:minilm` is the
all-MiniLM-L6-v2 shipped with the default teacher (a student of the teacher's own shape).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("pretrained", __doc__)
