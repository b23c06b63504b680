"""The one exception type for bad user input: a clear message, no traceback needed."""


class KDSweepError(ValueError):
    """Bad input (config, YAML, dataset, checkpoint). The message names the field and the file."""


class NonFiniteLossError(RuntimeError):
    """A NaN/Inf loss: training stops naming the component(s), epoch and step that went bad."""
