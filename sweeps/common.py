"""Compatibility only: sweeps/common.py was split into cli.py, run.py, tuner.py, summary.py
and labels.py. A sweep started before the split saved (in its tuner.pkl) a trial-naming
callback that refers to `sweeps.common.describe`; this name lets such a sweep resume.
New code imports from the modules above."""

from sweeps.labels import describe

__all__ = ["describe"]
