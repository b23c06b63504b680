"""Temperature sweep: soft KD with the teacher's targets softened at T in {1, 2, 4, 8}.

python sweeps/temperature.py                 # fortunes topics, L2-H128 student
python sweeps/temperature.py --smoke         # seconds per trial
python sweeps/temperature.py alpha=0.5 --student L4-H256 --seeds 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("temperature", __doc__)
