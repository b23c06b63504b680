"""The text-classification trainable: typed configs, the epoch loop, checkpoints, analysis."""
