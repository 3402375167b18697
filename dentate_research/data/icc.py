"""The one intraclass correlation of the project (pingouin), with a shim for pingouin's result names.

Lives in ``data`` so that the phantom generator (rater reliability of its simulated tracings) and evaluation
(:func:`dentate_research.evaluation.stats.icc`, which re-exports it) share it without ``data`` importing
``evaluation``.

pingouin renamed the rows and the CI column of ``intraclass_corr`` between the releases that
``pyproject.toml`` allows (read from each release's ``pingouin/reliability.py``):

=============  ============================================  ==========
pingouin       ``Type`` values                               CI column
=============  ============================================  ==========
0.5.4, 0.5.5   ICC1, ICC2, ICC3, ICC1k, ICC2k, ICC3k         ``CI95%``
0.6.0          ICC1, ICC2, ICC3, ICC1k, ICC2k, ICC3k         ``CI95``
0.6.1, 0.7.x   ICC(1,1), ICC(A,1), ICC(C,1), ICC(1,k), ...   ``CI95``
=============  ============================================  ==========

:func:`pingouin_icc_table` maps every variant onto the Shrout-Fleiss names used here; pingouin rounds the CI bounds
to 2 decimals in all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

ICC_FORMS = {"ICC1": "ICC(1,1) one-way random, single rater",
             "ICC2": "ICC(2,1) two-way random, absolute agreement, single rater",
             "ICC3": "ICC(3,1) two-way mixed, consistency, single rater",
             "ICC1k": "ICC(1,k) one-way random, mean of k raters",
             "ICC2k": "ICC(2,k) two-way random, absolute agreement, mean of k raters",
             "ICC3k": "ICC(3,k) two-way mixed, consistency, mean of k raters"}
# Shrout-Fleiss name -> pingouin >= 0.6.1 'Type' (McGraw-Wong notation); pingouin <= 0.6.0 used the left names
PINGOUIN_TYPES = {"ICC1": "ICC(1,1)", "ICC2": "ICC(A,1)", "ICC3": "ICC(C,1)", "ICC1k": "ICC(1,k)",
                  "ICC2k": "ICC(A,k)", "ICC3k": "ICC(C,k)"}
PINGOUIN_CI_COLUMNS = ("CI95", "CI95%")  # pingouin >= 0.6.0, <= 0.5.5


def pingouin_icc_table(table: pd.DataFrame) -> pd.DataFrame:
    """``pingouin.intraclass_corr``'s table (any release from 0.5.4 to 0.7) indexed by Shrout-Fleiss name
    (``ICC1`` ... ``ICC3k``), with the CI column named ``CI95``."""
    if "Type" not in table.columns:
        raise ValueError(f"pingouin.intraclass_corr result has no 'Type' column; columns: {list(table.columns)}")
    ci = next((c for c in PINGOUIN_CI_COLUMNS if c in table.columns), None)
    if ci is None:
        raise ValueError(f"pingouin.intraclass_corr result has no CI column {list(PINGOUIN_CI_COLUMNS)}; columns: "
                         f"{list(table.columns)}")
    to_shrout_fleiss = {v: k for k, v in PINGOUIN_TYPES.items()}
    out = table.rename(columns={ci: "CI95"})
    out["Type"] = [to_shrout_fleiss.get(str(t), str(t)) for t in out["Type"]]
    unknown = sorted(set(out["Type"]) - set(ICC_FORMS))
    if unknown:
        raise ValueError(f"pingouin.intraclass_corr result has unknown Type value(s) {unknown}; allowed: "
                         f"{list(ICC_FORMS)} or {list(PINGOUIN_TYPES.values())}")
    return out.set_index("Type")


def icc(data: pd.DataFrame, targets: str, raters: str, ratings: str,
        forms: Sequence[str] = ("ICC2", "ICC3")) -> pd.DataFrame:
    """Intraclass correlation (pingouin) on long data; one row per requested form.

    Args:
        data: long table, one row per (target, rater) rating; targets with a missing rating are dropped
            (pingouin needs a complete design) and the number kept is reported in ``n_targets``.
        targets / raters / ratings: column names (e.g. 'case', 'rater', 'volume_mm3').
        forms: Shrout-Fleiss names: 'ICC2' (= ICC(2,1), pingouin 'ICC(A,1)', primary) and 'ICC3'
            (= ICC(3,1), 'ICC(C,1)'); also 'ICC1', 'ICC1k', 'ICC2k', 'ICC3k'.

    pingouin rounds the CI bounds to 2 decimals.

    Returns columns form (Shrout-Fleiss name), form_name, icc, ci95_low, ci95_high, F, pval, n_targets, n_raters.
    """
    import pingouin as pg

    for form in forms:
        if form not in ICC_FORMS:
            raise ValueError(f"unknown ICC form '{form}'; allowed: {list(ICC_FORMS)}")
    clean = data[[targets, raters, ratings]].dropna()
    wide = clean.pivot_table(index=targets, columns=raters, values=ratings, aggfunc="first").dropna()
    n_targets, n_raters = wide.shape
    if n_raters < 2 or n_targets < 3:
        raise ValueError(f"ICC needs >= 2 raters and >= 3 targets with complete ratings; got {n_raters} raters "
                         f"and {n_targets} targets in column '{ratings}'")
    long = wide.reset_index().melt(id_vars=targets, var_name=raters, value_name=ratings)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # perfect agreement divides by a zero error mean square (pingouin then returns ICC 1 / NaN CI);
        # pingouin 0.7 also uses a pandas keyword that pandas 3 deprecates
        warnings.simplefilter("ignore")
        res = pingouin_icc_table(pg.intraclass_corr(data=long, targets=targets, raters=raters, ratings=ratings))
    rows = []
    for form in forms:
        r = res.loc[form]
        lo, hi = (float(v) for v in r["CI95"])
        rows.append({"form": form, "form_name": ICC_FORMS[form],
                     "icc": float(r["ICC"]), "ci95_low": lo, "ci95_high": hi, "F": float(r["F"]),
                     "pval": float(r["pval"]), "n_targets": n_targets, "n_raters": n_raters})
    return pd.DataFrame(rows)
