"""Evaluation on DailyDilemmas: Yes/No scoring (`choices`), sweeps over steerers (`harness`), the metrics of
METHOD section 7 (`metrics`, arranged by `summary`), and reports (`report`)."""

from innerpissa.eval.choices import ChoiceIds, choice_ids
from innerpissa.eval.harness import DEFAULT_SYSTEM, evaluate, score_encoded
from innerpissa.eval.metrics import (
    bias_term,
    corrected_score,
    matched_effect,
    paired_delta,
    raw_score,
    slope_stats,
    spearman_over_means,
)
from innerpissa.eval.report import write_report
from innerpissa.eval.summary import axis_deltas, coeff_table, method_table, seed_table

__all__ = [
    "DEFAULT_SYSTEM", "ChoiceIds", "axis_deltas", "bias_term", "choice_ids", "coeff_table",
    "corrected_score", "evaluate", "matched_effect", "method_table", "paired_delta", "raw_score",
    "score_encoded", "seed_table", "slope_stats", "spearman_over_means", "write_report",
]
