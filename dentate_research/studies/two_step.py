"""T4: one step (the segmentation network slid over the whole volume) vs two steps (localize, crop, segment):
Dice per side and inference time on the internal test set."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm

from ..evaluation.stats import paired_comparison
from .registry import Study, fold0_two_step_runs, register
from .summaries import comparison_lines, dice_by_side
from .tables import write_table

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import StudyRunner

TWO_STEP, ONE_STEP = "two-step", "one-step (whole volume)"


def two_step_study(runner: StudyRunner) -> Path:
    """Write ``T4_one_vs_two_step.{md,csv}`` and the per-case rows; returns the Markdown path."""
    from ..inference.whole_volume import predict_whole_volume
    from ..runtime.stage_model import load_stage_model

    arch = runner.s.pipeline_arch
    loc_dir = runner.localizer()
    seg_dir = runner.train("segmentation", arch, "0")
    predictor = runner.predictor(loc_dir, seg_dir)
    whole = load_stage_model(seg_dir, device=runner.s.device)
    _, _, test = runner.fold_cases("0")
    rows = []
    for case in tqdm(test, desc="T4 one-step vs two-step"):
        volume, image_ppm, ref = runner.load_case(case)
        labels, seconds, flag = runner.segment_two_step(predictor, volume)
        rows += runner.evaluate_labels(case, image_ppm, ref, labels, TWO_STEP, "0", {"inference_s": seconds}, flag)
        t0 = time.perf_counter()
        one = predict_whole_volume(whole, volume).labels
        seconds_one = time.perf_counter() - t0
        rows += runner.evaluate_labels(case, image_ppm, ref, one, ONE_STEP, "0", {"inference_s": seconds_one})
    df = pd.DataFrame(rows)
    runner.save_per_case(df, "T4_one_vs_two_step")
    table = dice_by_side(df, ["method"])
    table["inference_s_per_case"] = [df.loc[df["method"] == m].groupby("case")["inference_s"].first().mean()
                                     for m in table["method"]]
    ratio = table["inference_s_per_case"].iloc[1] / table["inference_s_per_case"].iloc[0]
    comp = paired_comparison(df, "dice", methods=[TWO_STEP, ONE_STEP])
    notes = (f"Same segmentation network ({arch}) in both rows; one-step slides it over the whole volume and "
             "takes the head centre as midline for the world-side assignment. "
             f"One-step / two-step inference time ratio: {ratio:.1f}x. Paired Dice comparison:\n\n"
             + comparison_lines(comp))
    return write_table(table, runner.s.out_dir, "T4_one_vs_two_step",
                       "T4 One-step (whole volume) vs two-step (localize, crop, segment)", runner.stamp(), notes)


STUDY = register(Study(
    name="two_step", table_id="T4", table=two_step_study, runs=fold0_two_step_runs,
    title="One step (whole volume) vs two steps (localize, crop, segment): Dice and time"))
