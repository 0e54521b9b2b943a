"""Evaluation metrics for training data attribution (LDS and plots).

``plot_lds`` imports matplotlib only when called.
"""

from stride.evaluation.lds import (
    LDSReport,
    bootstrap_ci,
    evaluate_lds,
    lds_per_query,
    predicted_outputs,
    seed_ceiling,
    spearman_brown,
)
from stride.evaluation.plots import plot_lds

__all__ = [
    "LDSReport",
    "bootstrap_ci",
    "evaluate_lds",
    "lds_per_query",
    "plot_lds",
    "predicted_outputs",
    "seed_ceiling",
    "spearman_brown",
]
