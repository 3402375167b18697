"""T5: external sites. The two-step model vs the classical baseline tool (template built from training cases only):
Dice per side with paired t-test and Wilcoxon P values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm

from ..data.atomic import write_csv_atomic
from ..evaluation.stats import paired_comparison
from .paper import PAPER
from .registry import Study, fold0_two_step_runs, register
from .summaries import comparison_lines, dice_by_side, plot_dice_by_site
from .tables import write_table

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import StudyRunner

BASELINE = "classical baseline"


def external_study(runner: StudyRunner) -> Path:
    """Write ``T5_external.{md,csv}``, the paired tests, per-case rows and figures; returns the Markdown path."""
    s = runner.s
    arch = s.pipeline_arch
    ext = [runner.by_id[i] for i in runner.splits["external_test"]]
    if not ext:
        raise ValueError("study 'external' needs external_sites in the study settings")
    loc_dir = runner.localizer()
    seg_dir = runner.train("segmentation", arch, "0")
    predictor = runner.predictor(loc_dir, seg_dir)
    baseline = runner.baseline("0")
    deep = f"two-step {arch}"
    rows = []
    for case in tqdm(ext, desc="T5 external: two-step vs baseline"):
        volume, image_ppm, ref = runner.load_case(case)
        labels, seconds, flag = runner.segment_two_step(predictor, volume)
        rows += runner.evaluate_labels(case, image_ppm, ref, labels, deep, "0", {"inference_s": seconds}, flag)
        base_labels, seconds_b, base_flags = runner.segment_baseline(baseline, volume)
        rows += runner.evaluate_labels(case, image_ppm, ref, base_labels, BASELINE, "0",
                                       {"inference_s": seconds_b}, base_flags)
    df = pd.DataFrame(rows)
    runner.save_per_case(df, "T5_external")
    table = dice_by_side(df, ["method"])
    comp = paired_comparison(df, "dice", methods=[deep, BASELINE])
    plot_dice_by_site(df, runner.fig_dir, "T5_external", "method")
    notes = (f"External sites: {', '.join(s.splits.external_sites)} (never used for training, planning, "
             f"normalization or the baseline template). Paper: left {PAPER['external_dice_left']}, right "
             f"{PAPER['external_dice_right']}. Paired tests per side:\n\n" + comparison_lines(comp))
    write_csv_atomic(comp, s.out_dir / "T5_external_paired_tests.csv")
    return write_table(table, s.out_dir, "T5_external",
                       "T5 External sites: two-step model vs classical baseline", runner.stamp(), notes)


STUDY = register(Study(
    name="external", table_id="T5", table=external_study, runs=fold0_two_step_runs,
    title="External sites: the two-step model vs the classical baseline, paired tests"))
