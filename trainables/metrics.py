"""Metric names and modes, defined once per task (sweeps, ASHA, reports all read these)."""

METRIC = {"text": "dev_accuracy", "asr": "dev_wer", "lm": "dev_perplexity"}
MODE = {"text": "max", "asr": "min", "lm": "min"}
TEST_METRIC = {"text": "test_accuracy", "asr": "test_wer", "lm": "test_perplexity"}
