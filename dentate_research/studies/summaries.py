"""Summaries shared by the study tables: Dice per side as mean +/- SD, paired-test lines for the notes, and the
per-site Dice figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..data.labels import DN_SIDES, SIDE_NAMES


def mean_sd_text(values: pd.Series) -> str:
    """'0.901 +/- 0.030' of the numeric values ('0.901' for one value, 'n/a' for none)."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "n/a"
    return f"{v.mean():.3f} +/- {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def dice_by_side(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by`` (in order of appearance): Dice per side and HD95 (mm) as mean +/- SD, the
    number of cases and of cases whose method failed (a ``failed`` flag on any side)."""
    rows = []
    for key, part in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key, strict=True))
        for side in (SIDE_NAMES[value] for value in DN_SIDES):
            row[f"dice_{side}"] = mean_sd_text(part.loc[part["side"] == side, "dice"])
        row["hd95_mm"] = mean_sd_text(part["hd95_mm"])
        row["n_cases"] = part["case"].nunique()
        fails = part["flag"].fillna("").str.contains("failed").groupby(part["case"]).any().sum()
        row["failed_cases"] = int(fails)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_lines(comp: pd.DataFrame) -> str:
    """Markdown bullet lines of :func:`~dentate_research.evaluation.stats.paired_comparison` results."""
    if comp.empty:
        return "(no paired comparison possible)"
    out = []
    for _, r in comp.iterrows():
        out.append(f"- {r.get('side', '')}: {r['method_a']} vs {r['method_b']}, n = {r.get('n', '?')}, mean "
                   f"difference {r.get('mean_diff', float('nan')):.3f}, paired t-test P = "
                   f"{r.get('p_ttest', float('nan')):.2g}, Wilcoxon P = {r.get('p_wilcoxon', float('nan')):.2g}")
    return "\n".join(out)


def plot_dice_by_site(df: pd.DataFrame, fig_dir: Path, name: str, by: str) -> None:
    """``fig_dir/<name>_dice_by_site_<method>.png``, one figure per value of column ``by``."""
    from ..evaluation.plots import dice_by_site_plot

    fig_dir.mkdir(parents=True, exist_ok=True)
    for method, part in df.groupby(by):
        slug = "".join(ch if ch.isalnum() else "_" for ch in str(method)).strip("_")
        dice_by_site_plot(part, fig_dir / f"{name}_dice_by_site_{slug}.png", title=f"{name}: {method}")
