"""T7: what drives failure. The study's fold-0 two-step model and the classical baseline on hard-case phantoms.

Data: new subjects of every site from the phantom preset ``failure_preset`` (default ``hard``: low-iron DNs,
veins at the DN, air/bone artefacts, partial coverage, head size and tilt, motion, ringing, FRDA atrophy, MS
lesions near the DN; :mod:`dentate_research.data.phantom.hard`), generated with ``failure_seed`` (not the training
data's seed, so no subject is shared with training). Models: the fold-0 localizer + ``pipeline_arch`` segmenter of
the study (the same two-step model as T4/T5) and the classical baseline with the fold-0 template (built from
training cases only), both through the runner's own inference and evaluation code.

Reference: ``failure_reference`` (default the phantom truth ``true``: the factors are about the method, and the
simulated raters themselves disagree more at low contrast; a partially covered DN is scored on its covered part).
Unit of analysis: one DN side of one scan. A side fails when its Dice < 0.5 (a failed or empty prediction has
Dice 0); a side whose reference is empty is left out and counted.

Factors (the manifest's ``hard_*`` columns; per-side factors use the side's own value):

- contrast: the DN-minus-surround contrast of the image in ppm (after the site's gain), tertiles;
- age: 11-17, 18-30, 31-45, 46-64 years;
- vein contact: distance from the DN lamina to the nearest vein or sinus voxel, touching (<= 0.5 mm), near (0.5-3
  mm), apart (> 3 mm);
- sinus: the transverse-sigmoid sinus inside the brain mask or not (a bright tube in the posterior fossa);
- coverage: full, cerebellum cut (DN complete), DN cut;
- artefact: RMS residual background field in the cerebellum (ppm), tertiles;
- site, site role (development site of the model / external site), group, head tilt (< 10, 10-20, >= 20 degrees),
  motion (none, < 1.5 mm, >= 1.5 mm).

Per bin and method: number of sides and scans, mean Dice with a Student-t 95 % CI, failure rate with a Wilson 95 %
CI. Per bin, paired on the same sides: deep minus baseline mean Dice difference with a t 95 % CI and the Wilcoxon
signed-rank P value. Sides of one scan are not independent (both share the scan's artefacts), so the intervals
are somewhat too narrow for case-level factors; the per-scan counts are reported next to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data.atomic import write_csv_atomic, write_figure_atomic
from ..evaluation.stats import mean_ci, paired_comparison, wilson_interval
from .registry import Study, fold0_two_step_runs, register
from .summaries import comparison_lines, dice_by_side
from .tables import dataframe_to_markdown, write_table

if TYPE_CHECKING:
    from .runner import StudyRunner

FAIL_DICE = 0.5
DEEP, BASELINE = "two-step", "classical baseline"
AGE_BINS = ((11, 18, "11-17"), (18, 31, "18-30"), (31, 46, "31-45"), (46, 200, "46-64"))
TILT_BINS = ((0, 10, "<10 deg"), (10, 20, "10-20 deg"), (20, 180, ">=20 deg"))


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


def _fixed_bin(value: float, bins: tuple[tuple[float, float, str], ...]) -> str:
    if not np.isfinite(value):
        return "n/a"
    for low, high, name in bins:
        if low <= value < high:
            return name
    return "n/a"


def side_factors(meta: dict[str, Any], side: str) -> dict[str, Any]:
    """The raw factor values of one side of one scan (from its manifest row)."""
    return {
        "contrast_ppm": _number(meta.get(f"hard_dn_contrast_{side}_ppm")),
        "age": _number(meta.get("age")),
        "vein_contact_mm": _number(meta.get(f"hard_vein_contact_{side}_mm")),
        "sinus_in_mask": _number(meta.get("hard_sinus_in_mask")),
        "dn_coverage": _number(meta.get(f"hard_dn_coverage_{side}")),
        "cerebellum_coverage": _number(meta.get("hard_cerebellum_coverage")),
        "residual_field_ppm": _number(meta.get("hard_residual_field_ppm")),
        "head_tilt_deg": _number(meta.get("hard_head_tilt_deg")),
        "motion_mm": _number(meta.get("hard_motion_mm")),
    }


def _tertiles(values: pd.Series, unit: str, digits: int = 3) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce")
    finite = v.dropna()
    if finite.nunique() < 3:
        return pd.Series(["all"] * len(v), index=v.index).where(v.notna(), "n/a")
    q1, q2 = np.quantile(finite, [1 / 3, 2 / 3])
    names = [f"low (<{q1:.{digits}f} {unit})", f"mid ({q1:.{digits}f}-{q2:.{digits}f})",
             f"high (>={q2:.{digits}f} {unit})"]
    out = np.where(v < q1, names[0], np.where(v < q2, names[1], names[2]))
    return pd.Series(out, index=v.index).where(v.notna(), "n/a")


def assign_bins(df: pd.DataFrame) -> pd.DataFrame:
    """Add one ``bin_<factor>`` column per factor to a per-side table that has the raw factor columns."""
    out = df.copy()
    out["bin_contrast"] = _tertiles(out["contrast_ppm"], "ppm")
    out["bin_age"] = [_fixed_bin(a, AGE_BINS) for a in out["age"]]
    out["bin_vein_contact"] = ["n/a" if not np.isfinite(d) else "touching (<=0.5 mm)" if d <= 0.5
                               else "near (0.5-3 mm)" if d <= 3.0 else "apart (>3 mm)"
                               for d in out["vein_contact_mm"]]
    out["bin_sinus"] = ["n/a" if not np.isfinite(v) else "in the mask" if v > 0 else "outside the mask"
                        for v in out["sinus_in_mask"]]
    out["bin_coverage"] = ["n/a" if not np.isfinite(c) else "DN cut" if c < 0.999
                           else "cerebellum cut" if cb < 0.999 else "full"
                           for c, cb in zip(out["dn_coverage"], out["cerebellum_coverage"], strict=True)]
    out["bin_artefact"] = _tertiles(out["residual_field_ppm"], "ppm")
    out["bin_site"] = out["site"]
    out["bin_site_role"] = out["site_role"]
    out["bin_group"] = out["group"]
    out["bin_tilt"] = [_fixed_bin(t, TILT_BINS) for t in out["head_tilt_deg"]]
    out["bin_motion"] = ["n/a" if not np.isfinite(m) else "none" if m == 0 else "<1.5 mm" if m < 1.5
                         else ">=1.5 mm" for m in out["motion_mm"]]
    return out


FACTORS = ("contrast", "age", "vein_contact", "sinus", "coverage", "artefact", "site", "site_role", "group", "tilt",
           "motion")


def _ci_text(mean: float, low: float, high: float, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def bin_table(df: pd.DataFrame, methods: tuple[str, str]) -> pd.DataFrame:
    """One row per (factor, bin): per method n, mean Dice [95 % CI], failure rate [Wilson 95 % CI]; the paired
    deep-minus-baseline Dice difference [95 % CI] and Wilcoxon P. ``df``: per-side rows with ``bin_*``."""
    from scipy import stats

    rows = []
    deep, base = methods
    for factor in FACTORS:
        column = f"bin_{factor}"
        for name in _ordered_bins(df[column]):
            part = df[df[column] == name]
            row: dict[str, Any] = {"factor": factor, "bin": name, "n_scans": part["case"].nunique()}
            for method, label in ((deep, "deep"), (base, "baseline")):
                dice = part.loc[part["method"] == method, "dice"].to_numpy(float)
                mean, low, high = mean_ci(dice)
                fails = int((dice < FAIL_DICE).sum())
                f_low, f_high = wilson_interval(fails, len(dice))
                row[f"{label}_n_sides"] = len(dice)
                row[f"{label}_dice"] = _ci_text(mean, low, high)
                row[f"{label}_fail"] = (f"{fails}/{len(dice)} = {fails / len(dice):.0%} [{f_low:.0%}, {f_high:.0%}]"
                                        if len(dice) else "n/a")
                row[f"{label}_dice_mean"], row[f"{label}_fail_rate"] = mean, fails / len(dice) if len(dice) else np.nan
                row[f"{label}_fail_ci_low"], row[f"{label}_fail_ci_high"] = f_low, f_high
            wide = part.pivot_table(index=["case", "side"], columns="method", values="dice", aggfunc="first")
            if deep in wide and base in wide:
                pairs = wide[[deep, base]].dropna()
                diff = (pairs[deep] - pairs[base]).to_numpy(float)
            else:
                diff = np.array([])
            d_mean, d_low, d_high = mean_ci(diff)
            row["diff_deep_minus_baseline"] = _ci_text(d_mean, d_low, d_high)
            row["diff_mean"] = d_mean
            p = float("nan")
            if diff.size >= 2 and np.any(diff != 0):
                p = float(stats.wilcoxon(diff).pvalue)
            row["p_wilcoxon"] = p
            rows.append(row)
    return pd.DataFrame(rows)


def _ordered_bins(values: pd.Series) -> list[str]:
    order = [name for *_, name in AGE_BINS] + [name for *_, name in TILT_BINS] + [
        "touching (<=0.5 mm)", "near (0.5-3 mm)", "apart (>3 mm)", "outside the mask", "in the mask", "full",
        "cerebellum cut", "DN cut", "none",
        "<1.5 mm", ">=1.5 mm", "development", "external"]
    present = [v for v in dict.fromkeys(values) if v != "n/a"]

    def key(v: str) -> tuple[int, str]:
        if v.startswith("low ("):
            return (0, v)
        if v.startswith("mid ("):
            return (1, v)
        if v.startswith("high ("):
            return (2, v)
        return (order.index(v) if v in order else 100, v)

    return sorted(present, key=key) + (["n/a"] if "n/a" in set(values) else [])


def failure_plot(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Failure rate (Dice < 0.5) per bin and factor, deep vs baseline, with Wilson 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [f for f in FACTORS if f in set(table["factor"])]
    cols = 5
    rows_n = int(np.ceil(len(factors) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, factor in zip(axes.ravel(), factors, strict=False):
        part = table[table["factor"] == factor]
        x = np.arange(len(part))
        for offset, label, colour in ((-0.18, "deep", "#1f77b4"), (0.18, "baseline", "#d62728")):
            rate = part[f"{label}_fail_rate"].to_numpy(float)
            low = np.clip(rate - part[f"{label}_fail_ci_low"].to_numpy(float), 0, None)
            high = np.clip(part[f"{label}_fail_ci_high"].to_numpy(float) - rate, 0, None)
            ax.bar(x + offset, rate, 0.36, color=colour, label="two-step" if label == "deep" else "baseline",
                   yerr=np.nan_to_num(np.vstack([low, high])), capsize=2, error_kw={"lw": 0.8})
        ax.set_xticks(x)
        ax.set_xticklabels([b.split(" (")[0] if b.startswith(("low", "mid", "high")) else b for b in part["bin"]],
                           rotation=40, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(factor, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.ravel()[len(factors):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("failure rate (Dice < 0.5)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_figure_atomic(fig, path, dpi=90)
    plt.close(fig)
    return path


def _guarded(method, model: Any, volume: Any) -> tuple[Any, float, str]:
    """A method's (labels, seconds, flags); an unexpected error on a hard scan is that scan's failure (labels None,
    flag ``failed:error:<type>``), not the end of the study."""
    import time

    t0 = time.perf_counter()
    try:
        return method(model, volume)
    except Exception as exc:  # noqa: BLE001 - a failure mode to count, reported in the flag column
        return None, time.perf_counter() - t0, f"failed:error:{type(exc).__name__}"


def failure_data(runner: StudyRunner) -> Path:
    """The manifest of the hard-case phantoms (generated once, then reused)."""
    from ..data.phantom import generate_dataset

    s, fm = runner.s, runner.s.failure_modes
    folder = Path(fm.data_dir) if fm.data_dir else (
        s.work_dir / f"failure_data_{fm.preset}_seed{fm.seed}_n{fm.n_subjects_per_site}")
    manifest = folder / "manifest.tsv"
    if not manifest.exists():
        if fm.seed == s.data.seed and s.manifest is None and fm.preset == s.data.preset:
            raise ValueError("failure_modes.seed equals the training data's seed with the same preset: the T7 "
                             "scans would be the training subjects; choose another seed")
        manifest = generate_dataset(folder, preset=fm.preset, seed=fm.seed, n_jobs=s.data.n_jobs,
                                    n_subjects_per_site=fm.n_subjects_per_site, overwrite=folder.exists())
    return manifest


def failure_modes_study(runner: StudyRunner) -> Path:
    """Run T7 (see the module docstring) and write ``T7_failure_modes.{md,csv}``, the per-side table and a
    figure; returns the Markdown path."""
    from ..data.manifest import read_manifest

    s = runner.s
    arch = s.pipeline_arch
    predictor = runner.predictor(runner.localizer(), runner.train("segmentation", arch, "0"))
    baseline = runner.baseline("0")
    manifest = failure_data(runner)
    cases = read_manifest(manifest)
    development = set(runner.splits.get("development_sites", []))
    deep_name = f"{DEEP} {arch}"
    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc="T7 failure modes: two-step vs baseline on hard cases"):
        reference = s.failure_modes.reference if s.failure_modes.reference in case.labels else s.rater
        volume, image_ppm, ref = runner.load_case(case, reference)
        labels, seconds, flag = _guarded(runner.segment_two_step, predictor, volume)
        case_rows = runner.evaluate_labels(case, image_ppm, ref, labels, deep_name, "0", {"inference_s": seconds},
                                            flag, reference_name=reference)
        base_labels, seconds_b, base_flags = _guarded(runner.segment_baseline, baseline, volume)
        case_rows += runner.evaluate_labels(case, image_ppm, ref, base_labels, BASELINE, "0",
                                            {"inference_s": seconds_b}, base_flags, reference_name=reference)
        for row in case_rows:
            row.update(side_factors(case.meta, row["side"]))
            row["site_role"] = "development" if case.site in development else "external"
        rows += case_rows
    df = pd.DataFrame(rows)
    empty_ref = df["flag"].fillna("").str.contains("empty_reference|both_empty")
    n_left_out = int(empty_ref.sum() // 2)
    df = df[~empty_ref].copy()
    df["dice"] = df["dice"].fillna(0.0)  # a failed method is an empty prediction: Dice 0
    df["failed"] = df["dice"] < FAIL_DICE
    df = assign_bins(df)
    runner.save_per_case(df, "T7_failure_modes")
    table = bin_table(df, (deep_name, BASELINE))
    overall = dice_by_side(df, ["method"])
    comp = paired_comparison(df, "dice", methods=[deep_name, BASELINE])
    write_csv_atomic(comp, s.out_dir / "T7_failure_modes_paired_tests.csv")
    runner.fig_dir.mkdir(parents=True, exist_ok=True)
    failure_plot(table, runner.fig_dir / "T7_failure_rate_by_factor.png",
                 f"T7: failure rate (Dice < {FAIL_DICE}) per bin, {deep_name} vs {BASELINE}, 95 % Wilson CI")
    fail_total = {m: (int(part["failed"].sum()), len(part)) for m, part in df.groupby("method")}
    lines = []
    for method, (k, n) in fail_total.items():
        lo, hi = wilson_interval(k, n)
        lines.append(f"- {method}: {k}/{n} sides failed = {k / n:.0%} [{lo:.0%}, {hi:.0%}]")
    overall_md = dataframe_to_markdown(overall)
    keep = ["factor", "bin", "n_scans", "deep_n_sides", "deep_dice", "deep_fail", "baseline_dice", "baseline_fail",
            "diff_deep_minus_baseline", "p_wilcoxon"]
    notes = (f"Data: {len(cases)} scans of the phantom preset `{s.failure_modes.preset}` (seed {s.failure_modes.seed}, "
             f"{s.failure_modes.n_subjects_per_site} per site; `{manifest}`), new subjects (the model trained on "
             f"seed {s.data.seed}). Models: the fold-0 two-step model ({s.localizer_arch} localizer + {arch} "
             f"segmenter) and the classical baseline with the fold-0 template. Reference: "
             f"`{s.failure_modes.reference}` (falls back "
             f"to `{s.rater}` where absent); sides with an empty reference left out: {n_left_out} scans' worth. "
             f"A side fails when Dice < {FAIL_DICE}; the method failing (no output) counts as Dice 0. Dice: mean "
             "[Student-t 95 % CI]; failure: k/n = rate [Wilson 95 % CI]; diff: paired deep minus baseline Dice "
             "[t 95 % CI], P: Wilcoxon signed-rank. The unit is a DN side; both sides of a scan share its "
             "case-level factors, so their intervals are somewhat optimistic. Tertile edges are in the bin names "
             "(ppm). Failure rates over all bins:\n\n" + "\n".join(lines) + "\n\nOverall Dice per side:\n\n"
             + overall_md + "\nPaired tests per side (all hard scans):\n\n" + comparison_lines(comp)
             + "\n\nFigure: figures/T7_failure_rate_by_factor.png; per-side rows with the raw factor values: "
             "per_case/T7_failure_modes.csv.")
    write_csv_atomic(table, s.out_dir / "T7_failure_modes_full.csv")
    return write_table(table[keep], s.out_dir, "T7_failure_modes",
                       "T7 Failure modes: two-step model vs classical baseline on hard-case phantoms, per factor bin",
                       runner.stamp(), notes)


STUDY = register(Study(
    name="failure_modes", table_id="T7", table=failure_modes_study, runs=fold0_two_step_runs,
    title="Failure modes: Dice and failure rate per hard-case factor, two-step vs baseline"))
