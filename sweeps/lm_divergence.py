"""Causal-LM distillation: which divergence and temperature? (forward/reverse KL, JSD, TVD x T)

python sweeps/lm_divergence.py                      # SmolLM2-135M (4-bit GGUF) teacher, fortunes
python sweeps/lm_divergence.py --smoke              # seconds per trial
python sweeps/lm_divergence.py --seeds 3 --confirm 3   # + the independent baseline, tested once
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("lm_divergence", __doc__)
