"""Post-training analysis of students: attribution similarity to the teacher, efficiency.

Pure functions over models and tokenized splits (no Ray, no MLflow): the text epoch loop calls
them at the final epoch, and `sweeps/report.py` aggregates what they report.
"""

from kdsweep.analysis.attribution import (
    attribution_similarity,
    cosine_similarity,
    merge_word_pieces,
    similarity_from_attributions,
    spearman_correlation,
    token_attributions,
    word_level_similarity,
)
from kdsweep.analysis.efficiency import efficiency_metrics, measure_speed, size_on_disk_mb

__all__ = [
    "attribution_similarity",
    "cosine_similarity",
    "efficiency_metrics",
    "measure_speed",
    "merge_word_pieces",
    "similarity_from_attributions",
    "size_on_disk_mb",
    "spearman_correlation",
    "token_attributions",
    "word_level_similarity",
]
