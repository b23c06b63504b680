"""Strategy sweep: independent vs soft vs hard vs hidden-state vs attention KD.

python sweeps/strategy.py                    # same student, same data, method varied
python sweeps/strategy.py --seeds 3 --student L4-H312
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("strategy", __doc__)
