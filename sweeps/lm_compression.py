"""Causal-LM distillation: is the gain consistent across student sizes?

Students of 3, 6 or 10 evenly spaced teacher layers x {independent, kd}.

python sweeps/lm_compression.py                      # SmolLM2-135M (4-bit GGUF) teacher, fortunes
python sweeps/lm_compression.py --smoke              # seconds per trial
python sweeps/lm_compression.py --seeds 3 --confirm 1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("lm_compression", __doc__)
