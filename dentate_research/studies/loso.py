"""T6: unseen sites (leave one site out). Localizer and segmenter retrained without the site; automated vs manual
DN volume and mean susceptibility: Pearson r, ICC(2,1)/ICC(3,1), Bland-Altman, pooled and per site."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm

from ..data.labels import DN_SIDES, SIDE_NAMES
from ..evaluation.stats import agreement
from .paper import PAPER
from .registry import RunKey, Study, register
from .tables import write_table

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import StudyRunner

KEEP = ["site", "side", "quantity", "pearson_r", "pearson_ci95_low", "pearson_ci95_high", "pearson_p", "ICC2",
        "ICC2_ci95_low", "ICC2_ci95_high", "ICC3", "ba_bias", "ba_loa_low", "ba_loa_high", "pearson_n"]


def loso_sites(runner: StudyRunner) -> list[str]:
    """The sites left out in turn: ``loso_sites`` of the settings, default every development site."""
    return runner.s.loso_sites or list(runner.splits["development_sites"])


def loso_runs(runner: StudyRunner) -> list[RunKey]:
    """A localizer and a segmenter per left-out site."""
    return [run for site in loso_sites(runner)
            for run in (("localization", runner.s.localizer_arch, f"loso:{site}"),
                        ("segmentation", runner.s.pipeline_arch, f"loso:{site}"))]


def loso_study(runner: StudyRunner) -> Path:
    """Write ``T6_unseen_sites.{md,csv}``, per-case rows and Bland-Altman figures; returns the Markdown path."""
    from ..evaluation.plots import bland_altman_plot

    s = runner.s
    arch = s.pipeline_arch
    sites = loso_sites(runner)
    rows = []
    for site in sites:
        fold = f"loso:{site}"
        loc_dir = runner.train("localization", s.localizer_arch, fold)
        seg_dir = runner.train("segmentation", arch, fold)
        predictor = runner.predictor(loc_dir, seg_dir)
        _, _, test = runner.fold_cases(fold)
        for case in tqdm(test, desc=f"T6 unseen site {site}"):
            volume, image_ppm, ref = runner.load_case(case)
            labels, seconds, flag = runner.segment_two_step(predictor, volume)
            rows += runner.evaluate_labels(case, image_ppm, ref, labels, f"two-step {arch}", fold,
                                           {"inference_s": seconds}, flag)
    df = pd.DataFrame(rows)
    runner.save_per_case(df, "T6_unseen_sites")
    volume = agreement(df, "volume_pred_mm3", "volume_ref_mm3", by=["side"])
    chi = agreement(df, "chi_pred_ppm", "chi_ref_ppm", by=["side"])
    per_site = agreement(df, "volume_pred_mm3", "volume_ref_mm3", by=["site", "side"])
    table = pd.concat([volume.assign(site="all"), chi.assign(site="all"), per_site], ignore_index=True)
    table = table[[c for c in KEEP if c in table.columns]]
    runner.fig_dir.mkdir(parents=True, exist_ok=True)
    for side in (SIDE_NAMES[value] for value in DN_SIDES):
        part = df[df["side"] == side]
        if len(part.dropna(subset=["volume_pred_mm3", "volume_ref_mm3"])) >= 2:
            bland_altman_plot(part, runner.fig_dir / f"T6_bland_altman_volume_{side}.png",
                              title=f"Unseen sites, {side} DN volume (mm^3)")
    notes = (f"Left-out sites: {', '.join(sites)}; each row of 'all' pools the left-out sites' cases, each "
             "predicted by models trained without its site"
             + (f" (segmentation runs with {s.loso_overrides})" if s.loso_overrides else "")
             + ". ICC2 = ICC(2,1) absolute agreement, ICC3 = "
             f"ICC(3,1) consistency. Paper (unseen datasets, volume): Pearson r "
             f"{PAPER['unseen_pearson_volume_left']} left, {PAPER['unseen_pearson_volume_right']} right.")
    return write_table(table, s.out_dir, "T6_unseen_sites",
                       "T6 Unseen sites (leave one site out): automated vs manual DN volume and mean chi",
                       runner.stamp(), notes)


STUDY = register(Study(
    name="loso", table_id="T6", table=loso_study, runs=loso_runs,
    title="Unseen sites (leave one site out): automated vs manual DN volume and mean chi"))
