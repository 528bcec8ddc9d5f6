"""Evaluation: the `Task` seam every evaluation implements (`task`: DailyDilemmas choices and generated text),
the DailyDilemmas harness (`choices`, `harness`, `sweep`, `metrics`, `summary`), generation (`generation`,
`decode`, `gen_metrics`), sign calibration and probes (`calibration`, `sentiment_probe`), one statistics
home (`stats`) and the reports (`report`)."""

from innerpissa.eval.choices import ChoiceIds, choice_ids
from innerpissa.eval.harness import DEFAULT_SYSTEM, evaluate, score_encoded
from innerpissa.eval.metrics import (
    bias_term,
    corrected_score,
    matched_effect,
    paired_delta,
    raw_score,
    slope_stats,
)
from innerpissa.eval.report import write_report
from innerpissa.eval.stats import bootstrap_mean_ci, spearman
from innerpissa.eval.summary import axis_deltas, coeff_table, method_table, seed_table

__all__ = [
    "DEFAULT_SYSTEM", "ChoiceIds", "axis_deltas", "bias_term", "bootstrap_mean_ci", "choice_ids", "coeff_table",
    "corrected_score", "evaluate", "matched_effect", "method_table", "paired_delta", "raw_score",
    "score_encoded", "seed_table", "slope_stats", "spearman", "write_report",
]
