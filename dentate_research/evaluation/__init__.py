"""Evaluation: per-case metrics, statistics, rater reliability, reports and plots.

Everything starts from one per-case long table (:func:`evaluate_cases`): one row per case x side x method x
reference rater. Summaries, ICC, Pearson r, Bland-Altman and paired comparisons are computed from it.
"""

from .metrics import (
    METRIC_COLUMNS,
    MissingPredictionError,
    dice,
    evaluate_case,
    evaluate_cases,
    find_prediction,
    hd95_and_assd,
)
from .reliability import rater_reliability
from .report import write_comparison, write_report
from .stats import agreement, bland_altman, icc, paired_comparison, paired_test, pearson, summarize

__all__ = ["METRIC_COLUMNS", "MissingPredictionError", "agreement", "bland_altman", "dice", "evaluate_case",
           "evaluate_cases", "find_prediction", "hd95_and_assd", "icc", "paired_comparison", "paired_test",
           "pearson", "rater_reliability", "summarize", "write_comparison", "write_report"]
