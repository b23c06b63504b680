"""Speech recognition: corpora and log-mel features, BiLSTM-CTC models and their import,
CTC losses, the speech teacher/twin store, greedy and beam + n-gram decoding."""
