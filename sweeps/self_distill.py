"""Self-distillation sweep (speech): BiLSTM-CTC trained alone vs taught by its stored twin.

python sweeps/self_distill.py                # commands corpus (1500 utterances), L2-H128, 12 epochs
python sweeps/self_distill.py --smoke        # seconds per trial
python sweeps/self_distill.py --seeds 3 epochs=20 alpha=0.5 beta=0.4
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("self_distill", __doc__)
