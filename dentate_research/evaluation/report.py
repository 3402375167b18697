"""Tables and reports written from the per-case long table (CSV + Markdown + PNG + JSON).

Every file is written atomically (:mod:`dentate_research.data.atomic`). :data:`REPORT_FILES` /
:data:`COMPARISON_FILES` name what :func:`write_report` / :func:`write_comparison` may write, so a caller can
refuse to replace an earlier report (``evaluate ... --out`` without ``--overwrite``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dentate_research.data.atomic import write_csv_atomic, write_text_atomic

from .stats import agreement, format_mean_sd, paired_comparison, paired_dropped_cases, summarize

REPORT_FILES = ("per_case.csv", "summary_by_side.csv", "summary_by_site.csv", "summary_by_group.csv", "agreement.csv",
                "summary.md", "report.json", "bland_altman_volume.png", "bland_altman_susceptibility.png",
                "scatter_volume.png", "dice_by_site.png")
COMPARISON_FILES = ("comparison.csv", "comparison.md", "comparison_exclusions.csv")

SUMMARY_GROUPINGS = {"side": ("method", "reference", "side"), "site": ("method", "reference", "site", "side"),
                     "group": ("method", "reference", "group", "side")}


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< .001" if p < 0.001 else f"{p:.3f}"


def _flag_counts(df: pd.DataFrame) -> dict[str, int]:
    flags = df.get("flag", pd.Series(dtype=str)).fillna("").astype(str)
    return {k: int(v) for k, v in flags[flags != ""].value_counts().items()}


def summary_markdown(df: pd.DataFrame, title: str = "Evaluation") -> str:
    """Markdown report: Dice/HD95/ASSD per side, per site and per group; volume and susceptibility agreement."""
    lines = [f"# {title}", ""]
    n_cases = df["case"].nunique() if not df.empty else 0
    lines.append(f"{n_cases} cases, {len(df)} case-side rows, methods: {', '.join(map(str, df['method'].unique()))}; "
                 f"reference: {', '.join(map(str, df['reference'].unique()))}.")
    counts = _flag_counts(df)
    if counts:
        lines.append("Flagged rows (excluded from metric means where the metric is NaN): "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ".")
    lines.append("Empty-mask policy: both empty -> Dice NaN ('both_empty'); one empty -> Dice 0, distances NaN.")
    lines += ["", "## Overlap and distances per side (mean ± SD)", "",
              "| method | reference | side | Dice | HD95 (mm) | ASSD (mm) | n |", "|---|---|---|---|---|---|---|"]
    for _, r in summarize(df, SUMMARY_GROUPINGS["side"]).iterrows():
        lines.append(f"| {r['method']} | {r['reference']} | {r['side']} | "
                     f"{format_mean_sd(r['dice_mean'], r['dice_sd'])} | "
                     f"{format_mean_sd(r['hd95_mm_mean'], r['hd95_mm_sd'])} | "
                     f"{format_mean_sd(r['assd_mm_mean'], r['assd_mm_sd'])} | {r['dice_n']} |")
    for name in ("site", "group"):
        key = SUMMARY_GROUPINGS[name]
        if name not in df.columns or df[name].fillna("").eq("").all():
            continue
        lines += ["", f"## Dice per {name} (mean ± SD)", "", f"| method | {name} | left | right | n |",
                  "|---|---|---|---|---|"]
        s = summarize(df, key, metrics=("dice",))
        for (method, _ref, value), part in s.groupby(["method", "reference", name], sort=True):
            cells = {r["side"]: format_mean_sd(r["dice_mean"], r["dice_sd"]) for _, r in part.iterrows()}
            lines.append(f"| {method} | {value} | {cells.get('left', 'n/a')} | {cells.get('right', 'n/a')} | "
                         f"{int(part['dice_n'].max())} |")
    for quantity, pred_col, ref_col, unit in (("DN volume", "volume_pred_mm3", "volume_ref_mm3", "mm³"),
                                              ("mean susceptibility", "chi_pred_ppm", "chi_ref_ppm", "ppm")):
        agr = agreement(df, pred_col, ref_col)
        if agr.empty:
            continue
        lines += ["", f"## Agreement with the reference: {quantity} ({unit})", "",
                  "| method | side | Pearson r (95% CI), P | ICC(2,1) (95% CI) | ICC(3,1) (95% CI) | "
                  "Bland-Altman bias [LoA] | n |", "|---|---|---|---|---|---|---|"]
        for _, r in agr.iterrows():
            lines.append(
                f"| {r['method']} | {r['side']} | {r['pearson_r']:.2f} ({r['pearson_ci95_low']:.2f}, "
                f"{r['pearson_ci95_high']:.2f}), P {_p(r['pearson_p'])} | {r['ICC2']:.2f} ({r['ICC2_ci95_low']:.2f}, "
                f"{r['ICC2_ci95_high']:.2f}) | {r['ICC3']:.2f} ({r['ICC3_ci95_low']:.2f}, {r['ICC3_ci95_high']:.2f}) | "
                f"{r['ba_bias']:.3g} [{r['ba_loa_low']:.3g}, {r['ba_loa_high']:.3g}] | {int(r['pearson_n'])} |")
    return "\n".join(lines) + "\n"


def write_report(df: pd.DataFrame, out_dir: Path | str, title: str = "Evaluation", plots: bool = True,
                 extra: dict[str, object] | None = None) -> dict[str, Path]:
    """Write per_case.csv, summary_by_{side,site,group}.csv, agreement.csv, summary.md, report.json and PNGs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["per_case"] = out / "per_case.csv"
    write_csv_atomic(df, paths["per_case"])
    for name, key in SUMMARY_GROUPINGS.items():
        paths[f"summary_by_{name}"] = out / f"summary_by_{name}.csv"
        write_csv_atomic(summarize(df, key), paths[f"summary_by_{name}"])
    agr = pd.concat([agreement(df, "volume_pred_mm3", "volume_ref_mm3"), agreement(df, "chi_pred_ppm", "chi_ref_ppm")],
                    ignore_index=True)
    paths["agreement"] = out / "agreement.csv"
    write_csv_atomic(agr, paths["agreement"])
    paths["summary_md"] = out / "summary.md"
    write_text_atomic(paths["summary_md"], summary_markdown(df, title))
    if plots and not df.empty:
        from .plots import bland_altman_plot, dice_by_site_plot, scatter_plot

        paths["bland_altman_volume"] = bland_altman_plot(df, out / "bland_altman_volume.png",
                                                         title=f"{title}: DN volume")
        paths["bland_altman_chi"] = bland_altman_plot(df, out / "bland_altman_susceptibility.png", "chi_pred_ppm",
                                                      "chi_ref_ppm", title=f"{title}: mean susceptibility",
                                                      unit="ppm")
        paths["scatter_volume"] = scatter_plot(df, out / "scatter_volume.png", title=f"{title}: DN volume")
        paths["dice_by_site"] = dice_by_site_plot(df, out / "dice_by_site.png", title=f"{title}: Dice per site")
    counts = _flag_counts(df)
    report = {"title": title, "n_cases": int(df["case"].nunique()) if not df.empty else 0, "n_rows": len(df),
              "methods": [str(m) for m in df["method"].unique()], "flags": counts,
              "n_missing_predictions": int(df.loc[df["flag"] == "missing_prediction", "case"].nunique())
              if "flag" in df else 0,
              "files": {k: str(v) for k, v in paths.items()}, **(extra or {})}
    paths["report_json"] = out / "report.json"
    write_text_atomic(paths["report_json"], json.dumps(report, indent=2, default=str))
    return paths


def comparison_markdown(comp: pd.DataFrame, title: str = "Method comparison") -> str:
    """Markdown table of :func:`paired_comparison` results."""
    lines = [f"# {title}", "", "Paired on the same cases and sides. d_z = mean difference / SD of differences; "
             "r_rb = matched-pairs rank-biserial correlation.", "",
             "| side | metric | method A | method B | A (mean ± SD) | B (mean ± SD) | n | P (paired t) | "
             "P (Wilcoxon) | d_z | r_rb |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in comp.iterrows():
        lines.append(f"| {r.get('side', 'all')} | {r['metric']} | {r['method_a']} | {r['method_b']} | "
                     f"{format_mean_sd(r['mean_a'], r['sd_a'])} | {format_mean_sd(r['mean_b'], r['sd_b'])} | "
                     f"{int(r['n'])} | {_p(r['p_ttest'])} | {_p(r['p_wilcoxon'])} | {r['cohen_dz']:.2f} | "
                     f"{r['rank_biserial']:.2f} |")
    return "\n".join(lines) + "\n"


def comparison_exclusions(df: pd.DataFrame, metrics: Sequence[str] = ("dice", "hd95_mm"),
                          methods: Sequence[str] | None = None, method_col: str = "method",
                          pair_on: Sequence[str] = ("case", "side", "reference"), by: Sequence[str] = ("side",)
                          ) -> pd.DataFrame:
    """The cases the paired comparisons drop, per metric (:func:`~.stats.paired_dropped_cases` stacked):
    per metric, group (side) and method pair, ``n_dropped`` and ``dropped_cases`` (";"-joined)."""
    parts = [paired_dropped_cases(df, m, method_col, pair_on, by, methods) for m in metrics]
    columns = [*[b for b in by if b in df.columns], "metric", "method_a", "method_b", "n_dropped", "dropped_cases"]
    rows = [p for p in parts if not p.empty]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)


def write_comparison(df: pd.DataFrame, out_dir: Path | str, metrics: Sequence[str] = ("dice", "hd95_mm"),
                     methods: Sequence[str] | None = None) -> dict[str, Path]:
    """Paired comparisons per side for each metric; writes comparison.csv, comparison.md and
    comparison_exclusions.csv (the cases dropped from each comparison for a missing value, also listed in the
    Markdown)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comp = pd.concat([paired_comparison(df, metric=m, methods=methods) for m in metrics], ignore_index=True)
    excluded = comparison_exclusions(df, metrics, methods)
    paths = {"comparison_csv": out / "comparison.csv", "comparison_md": out / "comparison.md",
             "comparison_exclusions": out / "comparison_exclusions.csv"}
    write_csv_atomic(comp, paths["comparison_csv"])
    write_csv_atomic(excluded, paths["comparison_exclusions"])
    text = comparison_markdown(comp)
    dropped = excluded[excluded["n_dropped"] > 0]
    if len(dropped):
        lines = ["", "## Cases dropped for a missing value", "", "| side | metric | method A | method B | n dropped | "
                 "cases |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.get('side', 'all')} | {r['metric']} | {r['method_a']} | {r['method_b']} | {r['n_dropped']} | "
                  f"{r['dropped_cases'].replace(';', ', ')} |" for _, r in dropped.iterrows()]
        text += "\n".join(lines) + "\n"
    else:
        text += "\nNo case was dropped for a missing value.\n"
    write_text_atomic(paths["comparison_md"], text)
    return paths
