"""Alpha sweep: how much weight the soft KD term gets (0 = labels only, 1 = teacher only).

python sweeps/alpha.py                       # alpha in {0, .25, .5, .75, 1} at T=4
python sweeps/alpha.py temperature=2 --seeds 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("alpha", __doc__)
