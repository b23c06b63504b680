"""Optuna sweep: TPE proposes alpha, temperature and lr; ASHA stops bad configs early.

python sweeps/tune_kd.py                     # 12 trials
python sweeps/tune_kd.py --num-samples 40 --optuna-storage sqlite:///optuna.db
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("tune_kd", __doc__)
