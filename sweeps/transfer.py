"""Transfer-set sweep: soft KD with extra unlabeled text labeled by the teacher.

Soft KD (alpha 0.9, T 4) on fortunes with the dataset's own unlabeled records (~2.0k fortunes
beyond the 500 per topic) as the transfer set; transfer_ratio = transfer rows mixed into each
epoch per labeled row (0 = none: the plain soft-KD arm, 0.5, 1). CE uses labeled rows only, KD
all rows. The teacher labels the transfer texts once, cached in the teacher store.

python sweeps/transfer.py --seeds 3                # no / half / full transfer mix, 3 seeds each
python sweeps/transfer.py --smoke                  # seconds per trial
python sweeps/transfer.py transfer_set=augment     # masked/replaced copies of the train texts
python sweeps/transfer.py transfer_set=data/extra.txt transfer_size=1000
python sweeps/transfer.py --space transfer_independent --seeds 3  # labels-only baseline

Speech (search_spaces/asr_transfer.yaml): soft KD of a BiLSTM-CTC with extra synthetic
utterances the ASR teacher labels (transfer_set=synthetic; or a folder / list of .wav/.flac).

python sweeps/transfer.py --task asr --seeds 3     # transfer_ratio 0 / .5 / 1 on commands
python sweeps/transfer.py --task asr condition=hard transfer_set=data/unlabeled_wavs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

# CLI: driver/cli.py; the Tuner: driver/tuner.py build_tuner(); the steps: driver/run.py
from driver.cli import main  # noqa: E402

if __name__ == "__main__":
    main("transfer", __doc__)
