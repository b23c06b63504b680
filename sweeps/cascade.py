"""Cascade sweep: teacher -> student 1 -> student 2, each stage taught by the last stage's best.

    python sweeps/cascade.py                     # MiniLM -> L4-H256 -> L2-H128 (YAML `stages`)
    python sweeps/cascade.py --smoke

A stage may be a pretrained model (`stages: [<model dir | hub name>, L4-H312, L2-H128]`): it is
fine-tuned with soft KD on its own tokenizer's tokens, and the shape stages after it are built on
its vocabulary and read its tokens (soft KD across tokenizers needs only per-example logits).

Each stage is a sweep of its own (same YAML params, its own trials, ASHA, MLflow parent run);
the best checkpoint of stage k becomes `teacher_checkpoint` of stage k+1, and its cached logits
are stored in the teacher store like any teacher's.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the stages: driver/cascade.py run_cascade(); each stage: driver/run.py
from driver.cascade import run_cascade  # noqa: E402
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("cascade", __doc__, run=run_cascade)
