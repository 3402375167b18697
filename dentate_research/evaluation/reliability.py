"""Rater reliability of manual DN tracings: intrarater (retrace) and interrater ICC of volume, Dice between raters.

Paper: intrarater ICC 0.91, interrater ICC 0.78 (DN volume, averaged over sides). Here every ICC row names its
form: ICC(2,1) (absolute agreement, primary) and ICC(3,1) (consistency).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from dentate_research.data.io import load_label
from dentate_research.data.labels import DN_SIDES, SIDE_NAMES
from dentate_research.data.manifest import Case

from .metrics import side_metrics, voxel_volume_mm3
from .stats import format_mean_sd, icc

DEFAULT_PAIRS: tuple[tuple[str, str, str], ...] = (("intrarater", "rater1", "rater1_retrace"),
                                                   ("interrater", "rater1", "rater2"))
# summary sides: 'left', 'right' (data/labels.py SIDE_NAMES) and 'both' (all case-sides pooled)
SUMMARY_SIDES = (*(SIDE_NAMES[side] for side in DN_SIDES), "both")


def rater_pair_table(cases: Sequence[Case], rater_a: str, rater_b: str, progress: bool = True) -> pd.DataFrame:
    """Per case and side: volumes (mm^3) of two raters' tracings and their Dice / HD95 / ASSD.

    Cases lacking either rater's label are skipped (they are simply not part of that reliability study).
    """
    rows = []
    usable = [c for c in cases if rater_a in c.labels and rater_b in c.labels]
    for case in tqdm(usable, desc=f"{rater_a} vs {rater_b}", disable=not progress or len(usable) < 2):
        a = load_label(case.labels[rater_a])
        b = load_label(case.labels[rater_b], reference=a)
        voxel = voxel_volume_mm3(a.affine)
        for side in DN_SIDES:
            m = side_metrics(b.array == side, a.array == side, a.spacing, voxel)
            rows.append({"case": case.case_id, "subject": case.subject, "site": case.site,
                         "group": str(case.meta.get("group", "")), "side": SIDE_NAMES[side], "rater_a": rater_a,
                         "rater_b": rater_b, "volume_a_mm3": m["volume_ref_mm3"], "volume_b_mm3": m["volume_pred_mm3"],
                         "dice": m["dice"], "hd95_mm": m["hd95_mm"], "assd_mm": m["assd_mm"], "flag": m["flag"]})
    return pd.DataFrame(rows)


def rater_reliability(cases: Sequence[Case], pairs: Sequence[tuple[str, str, str]] = DEFAULT_PAIRS,
                      progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability of DN volume and overlap for each (study, rater_a, rater_b) pair.

    Returns (summary, per_case). ``summary`` has one row per study x side ('left', 'right', 'both' = all
    case-sides pooled) x ICC form with icc, 95 % CI, n cases, Dice mean/SD between the raters and mean volumes;
    ``mean_of_sides`` rows average the left and right ICC (the paper reports averages).
    """
    summary_rows, per_case = [], []
    for study, a, b in pairs:
        table = rater_pair_table(cases, a, b, progress)
        if table.empty:
            continue
        table.insert(0, "study", study)
        per_case.append(table)
        for side in SUMMARY_SIDES:
            part = table if side == "both" else table[table["side"] == side]
            long = pd.concat([
                pd.DataFrame({"target": part["case"] + ":" + part["side"], "rater": a,
                              "volume": part["volume_a_mm3"]}),
                pd.DataFrame({"target": part["case"] + ":" + part["side"], "rater": b,
                              "volume": part["volume_b_mm3"]})])
            dice_values = part["dice"].dropna()
            base = {"study": study, "rater_a": a, "rater_b": b, "side": side, "n_cases": part["case"].nunique(),
                    "dice_mean": float(dice_values.mean()) if len(dice_values) else float("nan"),
                    "dice_sd": float(dice_values.std(ddof=1)) if len(dice_values) > 1 else float("nan"),
                    "volume_a_mean_mm3": float(part["volume_a_mm3"].mean()),
                    "volume_b_mean_mm3": float(part["volume_b_mm3"].mean())}
            try:
                res = icc(long, "target", "rater", "volume")
            except ValueError as exc:
                summary_rows.append({**base, "form": "", "form_name": f"not computed: {exc}", "icc": float("nan"),
                                     "ci95_low": float("nan"), "ci95_high": float("nan")})
                continue
            for _, r in res.iterrows():
                summary_rows.append({**base, "form": r["form"], "form_name": r["form_name"], "icc": r["icc"],
                                     "ci95_low": r["ci95_low"], "ci95_high": r["ci95_high"], "pval": r["pval"]})
    summary = pd.DataFrame(summary_rows)
    if not summary.empty:
        sides = summary[summary["side"].isin([SIDE_NAMES[side] for side in DN_SIDES])]
        means = (sides.groupby(["study", "rater_a", "rater_b", "form", "form_name"], as_index=False)
                 .agg(icc=("icc", "mean"), dice_mean=("dice_mean", "mean"), n_cases=("n_cases", "max")))
        means["side"] = "mean_of_sides"
        summary = pd.concat([summary, means], ignore_index=True)
    return summary, (pd.concat(per_case, ignore_index=True) if per_case else pd.DataFrame())


def reliability_markdown(summary: pd.DataFrame) -> str:
    """Markdown table of the reliability summary (primary form first)."""
    if summary.empty:
        return "No rater pairs with labels on common cases.\n"
    lines = ["| study | raters | side | ICC form | ICC (95% CI) | Dice between raters | n |",
             "|---|---|---|---|---|---|---|"]
    order = {name: rank for rank, name in enumerate((*SUMMARY_SIDES, "mean_of_sides"))}
    ordered = summary.assign(_side=summary["side"].map(order)).sort_values(["study", "_side", "form"])
    for _, r in ordered.iterrows():
        ci = (f" ({r['ci95_low']:.2f}-{r['ci95_high']:.2f})" if np.isfinite(r.get("ci95_low", np.nan)) else "")
        dice_txt = format_mean_sd(r.get("dice_mean", np.nan), r.get("dice_sd", np.nan))
        lines.append(f"| {r['study']} | {r['rater_a']} vs {r['rater_b']} | {r['side']} | {r['form_name']} | "
                     f"{r['icc']:.2f}{ci} | {dice_txt} | {int(r['n_cases'])} |")
    return "\n".join(lines) + "\n"
