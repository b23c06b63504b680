"""The speech-recognition trainable: typed configs, the epoch loop, evaluation."""
