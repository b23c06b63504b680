"""Metric names and modes, defined once per task (sweeps, ASHA, reports all read these)."""

METRIC = {"text": "dev_accuracy", "asr": "dev_wer"}
MODE = {"text": "max", "asr": "min"}
TEST_METRIC = {"text": "test_accuracy", "asr": "test_wer"}
