"""Causal-LM distillation: whose tokens should the student learn from?

The corpus (independent, kd), teacher continuations (seqkd), student samples (on_policy).

python sweeps/lm_data.py                      # SmolLM2-135M (4-bit GGUF) teacher, fortunes
python sweeps/lm_data.py --smoke              # seconds per trial
python sweeps/lm_data.py --seeds 3 --confirm 1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("lm_data", __doc__)
