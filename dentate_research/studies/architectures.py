"""T3: architecture benchmark. Every architecture trained with the same split, data, budget and inferer, applied in
the same two-step pipeline (same localizer) to the internal test set: Dice per side, training iterations and time,
parameters, inference time; learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from .registry import RunKey, Study, register
from .summaries import dice_by_side, plot_dice_by_site
from .tables import write_table

if TYPE_CHECKING:
    from .runner import StudyRunner

EXTRA_COLUMNS = ("parameters_M", "iterations", "stop_reason", "best_val_dice", "best_at_iteration", "train_min",
                 "s_per_iteration", "inference_s_per_case")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _budget_iterations(run_dir: Path) -> int:
    """Training iterations of a run's budget (epochs x iterations per epoch of its config.yaml)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return int(cfg.trainer.epochs) * int(cfg.trainer.iterations_per_epoch)


def _training_summary(seg_dir: Path, device: str, times: list[float]) -> dict[str, Any]:
    """The T3 columns of one segmentation run (:data:`EXTRA_COLUMNS`); ``times``: inference s per test case."""
    from ..runtime.stage_model import load_stage_model
    from ..training.backends import get_backend

    info = _read_json(seg_dir / "run_info.json")
    summary = info.get("training_summary") or {}
    model = load_stage_model(seg_dir, device=device)
    parameters = get_backend(model.card.framework).count_parameters(model)
    iterations = summary.get("iterations_run") or _budget_iterations(seg_dir)
    train_s = float(info.get("timings_s", {}).get("train", float("nan")))
    best = summary.get("best") or {}
    return {
        "parameters_M": parameters / 1e6,
        "iterations": iterations, "stop_reason": summary.get("stop_reason", "budget"),
        "train_min": train_s / 60.0, "s_per_iteration": train_s / max(int(iterations or 1), 1),
        "best_val_dice": best.get("value", float("nan")), "best_at_iteration": best.get("iteration"),
        "inference_s_per_case": float(np.mean(times)) if times else float("nan"),
    }


def architecture_runs(runner: StudyRunner) -> list[RunKey]:
    """The fold-0 localizer and one segmenter per benchmarked architecture."""
    return [("localization", runner.s.localizer_arch, "0"),
            *[("segmentation", arch, "0") for arch in runner.s.architectures]]


def architectures_study(runner: StudyRunner) -> Path:
    """Write ``T3_architectures.{md,csv}``, per-case rows and figures; returns the Markdown path."""
    s = runner.s
    loc_dir = runner.localizer()
    _, _, test = runner.fold_cases("0")
    rows, summary_extra, curves = [], {}, {}
    for arch in s.architectures:
        seg_dir = runner.train("segmentation", arch, "0")
        predictor = runner.predictor(loc_dir, seg_dir)
        times = []
        for case in tqdm(test, desc=f"T3 {arch} internal test"):
            volume, image_ppm, ref = runner.load_case(case)
            labels, seconds, flag = runner.segment_two_step(predictor, volume)
            times.append(seconds)
            rows += runner.evaluate_labels(case, image_ppm, ref, labels, arch, "0", {"inference_s": seconds}, flag)
        summary_extra[arch] = _training_summary(seg_dir, s.device, times)
        curves[arch] = seg_dir / "metrics.csv"
    df = pd.DataFrame(rows)
    runner.save_per_case(df, "T3_architectures")
    table = dice_by_side(df, ["method"])
    for col in EXTRA_COLUMNS:
        table[col] = [summary_extra[m][col] for m in table["method"]]
    table = table.rename(columns={"method": "architecture"})
    plot_dice_by_site(df, runner.fig_dir, "T3_architectures", "method")
    from ..evaluation.plots import learning_curves_plot

    runner.fig_dir.mkdir(parents=True, exist_ok=True)
    learning_curves_plot(curves, runner.fig_dir / "T3_learning_curves.png",
                         title="T3: validation Dice (mean of sides) during training")
    return write_table(table, s.out_dir, "T3_architectures",
                       "T3 Architecture benchmark (two-step pipeline, internal test set)", runner.stamp(),
                       "Identical split, preprocessing, patch sampling, iteration budget, inferer and "
                       "post-processing for every architecture; the same localizer; only the network differs"
                       + (f" (architecture-specific overrides: {s.arch_overrides})" if s.arch_overrides
                          else "") + ". "
                       f"Reference: {s.rater}. iterations = training iterations run; stop_reason = "
                       "plateau (early stopping: no validation gain for trainer.patience validations), "
                       "time_budget (trainer.max_minutes reached before the plateau) or budget (all epochs); "
                       "best_val_dice = mean Dice of the sides on the fold's validation crops at the selected "
                       "checkpoint; learning curves in figures/T3_learning_curves.png. Budget: see config.yaml "
                       "of each run in the work folder and provenance.json.")


STUDY = register(Study(
    name="architectures", table_id="T3", table=architectures_study, runs=architecture_runs,
    title="Architectures in the same two-step pipeline: Dice per side, training, parameters"))
