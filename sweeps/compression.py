"""Compression sweep: every student size, trained independently and distilled.

python sweeps/compression.py                 # L2-H128, L4-H256, L4-H312 x {independent, soft}
python sweeps/compression.py --seeds 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("compression", __doc__)
