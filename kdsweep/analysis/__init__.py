"""Task-independent analysis of students: efficiency (size, speed) and sanity checks.

Pure functions (no Ray, no MLflow). Text attributions live in `kdsweep.text.attribution`.
"""
