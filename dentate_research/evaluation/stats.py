"""Statistics on the per-case long table: summaries, ICC, Pearson r, Bland-Altman, paired comparisons.

Conventions: ICC forms are always named. ICC(2,1) = two-way random effects, absolute agreement, single rater
(pingouin <= 0.6.0 ``Type == 'ICC2'``, pingouin >= 0.6.1 ``'ICC(A,1)'``) is the primary form; ICC(3,1) = two-way
mixed, consistency, single rater (``'ICC3'`` / ``'ICC(C,1)'``) is reported too. 95 % confidence intervals come
from pingouin (F-distribution based, rounded by pingouin to 2 decimals); :func:`icc` and its pingouin-version
shim live in :mod:`dentate_research.data.icc` (shared with the phantom generator) and are re-exported here.
Pearson r has a Fisher-z 95 % CI (scipy). Paired comparisons give the paired t-test and the Wilcoxon signed-rank
test with effect sizes Cohen's d_z (mean difference / SD of differences) and the matched-pairs rank-biserial
correlation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..data.icc import ICC_FORMS, PINGOUIN_TYPES, icc  # noqa: F401  (re-exported)

DEFAULT_SUMMARY_METRICS = ("dice", "hd95_mm", "assd_mm", "volume_pred_mm3", "volume_ref_mm3", "chi_pred_ppm",
                           "chi_ref_ppm")


def summarize(df: pd.DataFrame, by: Sequence[str] = ("method", "reference", "side"),
              metrics: Sequence[str] = DEFAULT_SUMMARY_METRICS) -> pd.DataFrame:
    """Mean, SD, median and count per group for each metric (NaNs excluded and counted).

    Returns one row per group with columns ``<metric>_mean``, ``<metric>_sd`` (ddof=1), ``<metric>_median``,
    ``<metric>_n`` (non-NaN values), plus ``n_rows`` and, when a ``flag`` column exists, the count of each
    flag (``n_<flag>``).
    """
    by = [b for b in by if b in df.columns]
    metrics = [m for m in metrics if m in df.columns]
    if df.empty:
        return pd.DataFrame(columns=[*by, "n_rows"])
    grouped = df.groupby(by, sort=True, dropna=False) if by else [((), df)]
    rows = []
    for key, part in grouped:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, object] = dict(zip(by, key, strict=True))
        row["n_rows"] = len(part)
        for m in metrics:
            values = pd.to_numeric(part[m], errors="coerce").dropna()
            row[f"{m}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{m}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            row[f"{m}_median"] = float(values.median()) if len(values) else float("nan")
            row[f"{m}_n"] = len(values)
        if "flag" in part.columns:
            flags = part["flag"].fillna("").astype(str)
            for flag, count in flags[flags != ""].value_counts().items():
                row[f"n_{flag}"] = int(count)
        rows.append(row)
    out = pd.DataFrame(rows)
    flag_cols = [c for c in out.columns if c.startswith("n_") and c != "n_rows"]
    out[flag_cols] = out[flag_cols].fillna(0).astype(int)
    return out


def format_mean_sd(mean: float, sd: float, digits: int = 2) -> str:
    """'0.90 ± 0.03' (or 'n/a')."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    if sd is None or not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def icc_two_columns(a: Sequence[float], b: Sequence[float], forms: Sequence[str] = ("ICC2", "ICC3")
                    ) -> pd.DataFrame:
    """ICC of two paired measurement series (e.g. automated vs manual volume of the same cases)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"icc_two_columns: series lengths differ ({a.shape} vs {b.shape})")
    n = len(a)
    long = pd.DataFrame({"target": np.tile(np.arange(n), 2), "rater": np.repeat(["a", "b"], n),
                         "rating": np.concatenate([a, b])})
    return icc(long, "target", "rater", "rating", forms)


def _paired_finite(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape:
        raise ValueError(f"paired series must have the same length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def pearson(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Pearson r with Fisher-z CI and two-sided P (pairs with a NaN are dropped; n reported)."""
    x, y = _paired_finite(x, y)
    n = len(x)
    if n < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"r": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"), "p": float("nan"), "n": n}
    res = stats.pearsonr(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):  # |r| = 1 gives a degenerate CI
        ci = res.confidence_interval(confidence_level=confidence)
    return {"r": float(res.statistic), "ci95_low": float(ci.low), "ci95_high": float(ci.high),
            "p": float(res.pvalue), "n": n}


def bland_altman(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Bland-Altman agreement of ``a`` (e.g. automated) with ``b`` (e.g. manual): difference = a - b.

    Returns bias (mean difference), sd of differences, limits of agreement bias ± 1.96 sd, and the
    relative bias in % of the mean of b.
    """
    a, b = _paired_finite(a, b)
    n = len(a)
    if n < 2:
        nan = float("nan")
        return {"bias": nan, "sd": nan, "loa_low": nan, "loa_high": nan, "bias_percent": nan, "n": n}
    diff = a - b
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd,
            "bias_percent": 100.0 * bias / float(np.mean(b)) if np.mean(b) != 0 else float("nan"), "n": n}


def rank_biserial_paired(x: Sequence[float], y: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of x - y: (R+ - R-) / (R+ + R-) over non-zero differences."""
    x, y = _paired_finite(x, y)
    d = x - y
    d = d[d != 0]
    if len(d) == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    r_plus, r_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((r_plus - r_minus) / (r_plus + r_minus))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaN, NaN for n = 0).

    Unlike the Wald interval it stays inside [0, 1] and is sensible for 0 or n successes (Wilson 1927;
    recommended by Brown, Cai & DasGupta, Stat Sci 2001)."""
    if n <= 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t confidence interval of the mean of the finite values (NaN bounds for n < 2)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2.0, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


def paired_test(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test of x vs y, with Cohen's d_z and rank-biserial r."""
    x, y = _paired_finite(x, y)
    n = len(x)
    nan = float("nan")
    out = {"n": n, "mean_a": float(x.mean()) if n else nan, "sd_a": float(x.std(ddof=1)) if n > 1 else nan,
           "mean_b": float(y.mean()) if n else nan, "sd_b": float(y.std(ddof=1)) if n > 1 else nan,
           "mean_diff": float((x - y).mean()) if n else nan, "t": nan, "p_ttest": nan, "cohen_dz": nan,
           "W": nan, "p_wilcoxon": nan, "rank_biserial": nan}
    if n < 2:
        return out
    d = x - y
    sd = d.std(ddof=1)
    if sd > 0:
        t = stats.ttest_rel(x, y)
        out.update(t=float(t.statistic), p_ttest=float(t.pvalue), cohen_dz=float(d.mean() / sd))
    if np.any(d != 0):
        w = stats.wilcoxon(x, y)
        out.update(W=float(w.statistic), p_wilcoxon=float(w.pvalue), rank_biserial=rank_biserial_paired(x, y))
    return out


def _method_pairs(df: pd.DataFrame, metric: str, method_col: str, pair_on: Sequence[str], by: Sequence[str],
                  methods: Sequence[str] | None, dropna: bool
                  ) -> Iterator[tuple[dict[str, object], str, str, pd.DataFrame]]:
    """Per group of ``by`` and per pair of methods (a before b in ``methods`` order, default the table's order of
    appearance): (group values, a, b, wide table of the group indexed by ``by`` + ``pair_on``, one column per
    method). ``dropna=True`` leaves out rows and methods whose values are all NaN (pandas ``pivot_table``)."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(df[method_col]))
    by = [b for b in by if b in df.columns]
    keys = [k for k in pair_on if k in df.columns and k not in by]
    wide = df.pivot_table(index=[*by, *keys], columns=method_col, values=metric, aggfunc="first", dropna=dropna)
    groups = wide.groupby(level=list(range(len(by)))) if by else [((), wide)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                if a in part.columns and b in part.columns:
                    yield dict(zip(by, key, strict=True)), a, b, part


def paired_comparison(df: pd.DataFrame, metric: str = "dice", method_col: str = "method",
                      pair_on: Sequence[str] = ("case", "side", "reference"), by: Sequence[str] = ("side",),
                      methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Paired comparison of every pair of methods in a long table, per group (default per side).

    Rows are paired on ``pair_on`` (same case, side and reference); cases missing for either method (or NaN)
    are dropped and ``n`` says how many pairs were used (which cases: :func:`paired_dropped_cases`).
    ``method_a`` is the first method in ``methods`` order (default: the table's order of appearance).
    """
    if metric not in df.columns:
        raise ValueError(f"metric '{metric}' not in table columns {list(df.columns)}")
    methods = list(methods) if methods is not None else list(dict.fromkeys(df[method_col]))
    if len(methods) < 2:
        raise ValueError(f"paired comparison needs at least 2 methods in column '{method_col}', got {methods}")
    rows = []
    for group, a, b, part in _method_pairs(df, metric, method_col, pair_on, by, methods, dropna=True):
        res = paired_test(part[a].to_numpy(), part[b].to_numpy())
        rows.append({**group, "metric": metric, "method_a": a, "method_b": b, **res})
    return pd.DataFrame(rows)


def paired_dropped_cases(df: pd.DataFrame, metric: str = "dice", method_col: str = "method",
                         pair_on: Sequence[str] = ("case", "side", "reference"), by: Sequence[str] = ("side",),
                         methods: Sequence[str] | None = None) -> pd.DataFrame:
    """The cases :func:`paired_comparison` drops: per group (side) and method pair, the cases present for either
    method whose value is missing or NaN for one of them (``n_dropped``, ``dropped_cases`` ";"-joined). Unlike
    the comparison, rows and methods whose values are all NaN count (as dropped), so a method without any value
    is reported too. Returns an empty table when ``metric`` is not a column."""
    by_present = [b for b in by if b in df.columns]
    columns = [*by_present, "metric", "method_a", "method_b", "n_dropped", "dropped_cases"]
    if metric not in df.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for group, a, b, part in _method_pairs(df, metric, method_col, pair_on, by, methods, dropna=False):
        dropped = part.index[(part[a].isna() | part[b].isna()).to_numpy()]
        cases = sorted({str(dict(zip(part.index.names, idx if isinstance(idx, tuple) else (idx,),
                                     strict=True)).get("case", idx)) for idx in dropped})
        rows.append({**group, "metric": metric, "method_a": a, "method_b": b, "n_dropped": len(cases),
                     "dropped_cases": ";".join(cases)})
    return pd.DataFrame(rows, columns=columns)


def agreement(df: pd.DataFrame, pred_col: str = "volume_pred_mm3", ref_col: str = "volume_ref_mm3",
              by: Sequence[str] = ("method", "reference", "side")) -> pd.DataFrame:
    """Per group: Pearson r (CI, P), ICC(2,1) and ICC(3,1) (CI) and Bland-Altman of pred vs ref values."""
    by = [b for b in by if b in df.columns]
    rows = []
    for key, part in df.groupby(by, sort=True) if by else [((), df)]:
        key = key if isinstance(key, tuple) else (key,)
        a, b = _paired_finite(part[pred_col], part[ref_col])
        row: dict[str, object] = {**dict(zip(by, key, strict=True)), "quantity": pred_col.replace("_pred", "")}
        row.update({f"pearson_{k}": v for k, v in pearson(a, b).items()})
        row.update({f"ba_{k}": v for k, v in bland_altman(a, b).items() if k != "n"})
        for form in ("ICC2", "ICC3"):
            row[f"{form}"] = row[f"{form}_ci95_low"] = row[f"{form}_ci95_high"] = float("nan")
        if len(a) >= 3:
            try:
                res = icc_two_columns(a, b).set_index("form")
                for form in ("ICC2", "ICC3"):
                    row[form] = res.loc[form, "icc"]
                    row[f"{form}_ci95_low"] = res.loc[form, "ci95_low"]
                    row[f"{form}_ci95_high"] = res.loc[form, "ci95_high"]
            except (ValueError, ZeroDivisionError, FloatingPointError):
                pass
        rows.append(row)
    return pd.DataFrame(rows)
