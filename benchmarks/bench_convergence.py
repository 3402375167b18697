"""Validation Dice against iterations and wall time for training recipes, side by side in one run.

Every recipe trains the segmentation stage on the same data, split (fold 0) and validation cases, one after the
other in this process (never two trainings at once: on 2 shared cores they slow each other 7-10x). Each run's own
validation curve (the inference code path on its validation crops) is read from its metrics.csv; then every final
model is applied in the two-step pipeline with the SAME localizer to the fold's validation scans, so the last
column compares the recipes on identical crops. Recipes are Hydra overrides of ``configs/train.yaml``:

- ``old``: the previous defaults (lateral labels, true-cerebellum crops, mild augmentation, trainer=short: 8 x 25
  iterations with the learning rate decayed to 0 at 200);
- ``lateral``, ``merged``: the new budget (trainer=converge: early stopping on the validation plateau) on the
  localizer's crops, with three-class or one-class labels, without domain randomization;
- ``merged_dr``: the new recipe (one DN class, localizer crops, domain randomization, converge budget);
- ``merged_dr_cl``, ``merged_dr_bf16_cl``: ``merged_dr`` (float32, one validation window per network call: the
  arithmetic before the throughput work) with the channels_last_3d memory format, and with bf16 autocast on top
  (``trainer.channels_last=true``, ``trainer.amp=true``): same validation Dice at less wall time?
- ``merged_dr_fast``: ``merged_dr_bf16_cl`` with two validation windows per network call
  (``inferer.sw_batch_size=2``): the schema's defaults.

    python benchmarks/bench_convergence.py --data work_data/phantom_cpu --localizer RUN_DIR --work /tmp/conv
    python benchmarks/bench_convergence.py ... --recipes old merged_dr --max-minutes 8
    python benchmarks/bench_convergence.py ... --recipes merged_dr merged_dr_bf16_cl --max-minutes 8 \
        --override trainer.patience=null

Writes WORK/convergence.csv (one row per validation), WORK/summary.csv and WORK/convergence.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dentate_research.cli.reproduce import compose_train_config  # noqa: E402

BASE = ["stage=segmentation", "logger=none", "data=phantom_cpu", "+arch=unet",
        "arch.kwargs.channels=[16,32,64,128]", "arch.kwargs.strides=[2,2,2]"]
NEW = ["trainer=converge", "stage.crop.source=localizer"]
SLOW = ["trainer.amp=false", "trainer.channels_last=false", "inferer.sw_batch_size=1"]
RECIPES: dict[str, list[str]] = {
    "old": ["trainer=short", "stage.label_scheme=lateral", "augmentation=default"],
    "lateral": [*NEW, "stage.label_scheme=lateral", "augmentation=default"],
    "merged": [*NEW, "stage.label_scheme=merged", "augmentation=default"],
    # the recipe with the arithmetic of before the throughput work: float32, contiguous memory, one validation
    # window per network call (the schema's defaults are now bf16 autocast, channels_last_3d, two windows per call)
    "merged_dr": [*NEW, "stage.label_scheme=merged", "augmentation=domain_randomization", *SLOW],
    # training throughput (issue: the paper's tables at the targets): the same recipe, faster arithmetic
    "merged_dr_cl": [*NEW, "stage.label_scheme=merged", "augmentation=domain_randomization", *SLOW,
                     "trainer.channels_last=true"],
    "merged_dr_bf16_cl": [*NEW, "stage.label_scheme=merged", "augmentation=domain_randomization", *SLOW,
                          "trainer.channels_last=true", "trainer.amp=true"],
    # ... and validation with two windows per network call: the schema's defaults
    "merged_dr_fast": [*NEW, "stage.label_scheme=merged", "augmentation=domain_randomization",
                       "trainer.channels_last=true", "trainer.amp=true", "inferer.sw_batch_size=2"],
}


def run_recipe(name: str, args: argparse.Namespace) -> Path:
    run_dir = args.work / name
    if (run_dir / "model.json").exists():
        print(f"[bench] {name}: reusing {run_dir}")
        return run_dir
    overrides = [*BASE, *RECIPES[name], f"data.root={args.data}", f"paths.run_dir={run_dir}",
                 f"stage.crop.localizer_run={args.localizer}", f"split.fold={args.fold}", f"seed={args.seed}"]
    if args.max_minutes is not None and name != "old":
        overrides.append(f"trainer.max_minutes={args.max_minutes}")
    overrides.extend(args.override)
    from dentate_research.training import train_stage

    print(f"[bench] {name}: {' '.join(overrides)}", flush=True)
    train_stage(compose_train_config(overrides))
    return run_dir


def validation_curve(run_dir: Path, recipe: str) -> pd.DataFrame:
    """One row per validation of a run's metrics.csv (the final re-validation of the selected checkpoint left out):
    recipe, epoch, iteration, wall_time_s, val_dice_left, val_dice_right."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    phase = metrics["phase"].fillna("") if "phase" in metrics else pd.Series("", index=metrics.index)
    val = metrics[metrics["val_dice_left"].notna() & (phase != "final")].copy()
    val["recipe"] = recipe
    return val[["recipe", "epoch", "iteration", "wall_time_s", "val_dice_left", "val_dice_right"]]


def pipeline_dice(run_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Two-step Dice (mean over the fold's validation scans) with the shared localizer, against the truth."""
    from dentate_research.data.io import load_image, load_label
    from dentate_research.data.manifest import read_manifest
    from dentate_research.evaluation.metrics import evaluate_case
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError

    card = json.loads((run_dir / "model.json").read_text())
    by_id = {c.case_id: c for c in read_manifest(args.data / "manifest.tsv")}
    predictor = DentatePredictor(args.localizer, run_dir)
    dice: dict[str, list[float]] = {"left": [], "right": []}
    for case_id in card["val_cases"]:
        case = by_id[case_id]
        image = load_image(case.image)
        try:
            labels = predictor.predict_volume(image).labels
        except SegmentationError:
            labels = np.zeros(image.shape, np.uint8)
        pred = type(image)(labels, image.affine)
        for row in evaluate_case(pred, load_label(case.label("true"), reference=image), image):
            dice[row["side"]].append(float(row["dice"]))
    return {f"pipeline_dice_{s}": float(np.mean(v)) for s, v in dice.items()}


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, part in curves.groupby("recipe", sort=False):
        for ax, x in zip(axes, ("iteration", "wall_time_s"), strict=True):
            line, = ax.plot(part[x], part["val_dice_left"], "o-", ms=3, label=f"{name} left")
            ax.plot(part[x], part["val_dice_right"], "s--", ms=3, color=line.get_color(), label=f"{name} right")
    axes[0].set_xlabel("training iterations")
    axes[1].set_xlabel("wall time (s, training + validation)")
    axes[0].set_ylabel("validation Dice (inference path)")
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    fig.suptitle("Segmentation stage: validation Dice per side vs iterations and wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="phantom_cpu data folder (manifest.tsv, splits/)")
    parser.add_argument("--localizer", type=Path, required=True, help="localization run directory")
    parser.add_argument("--work", type=Path, required=True, help="output folder (runs, csv, png)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--fold", default="0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per new-recipe run")
    parser.add_argument("--override", action="append", default=[], help="Hydra override for every recipe")
    args = parser.parse_args()
    from dentate_research.logs import console_logging

    console_logging()  # the library's messages (early stopping, fine-tuning) on stderr
    args.data, args.localizer, args.work = args.data.resolve(), args.localizer.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    curves, summary = [], []
    for name in args.recipes:
        load_before = os.getloadavg()[0]
        run_dir = run_recipe(name, args)
        curves.append(validation_curve(run_dir, name))
        info = json.loads((run_dir / "run_info.json").read_text())
        s = info.get("training_summary", {})
        t0 = time.perf_counter()
        row = {"recipe": name, "stop_reason": s.get("stop_reason"), "iterations_run": s.get("iterations_run"),
               "best_val_dice_mean": (s.get("best") or {}).get("value"),
               "best_at_iteration": (s.get("best") or {}).get("iteration"),
               "best_at_wall_s": (s.get("best") or {}).get("wall_time_s"),
               "time_to_0.8_s": ((s.get("time_to_dice") or {}).get("0.8") or {}).get("wall_time_s"),
               "time_to_0.85_s": ((s.get("time_to_dice") or {}).get("0.85") or {}).get("wall_time_s"),
               "train_s": info["timings_s"]["train"], "load_avg_1min_before": round(load_before, 2),
               "load_avg_1min_after": round(os.getloadavg()[0], 2), **pipeline_dice(run_dir, args)}
        row["pipeline_eval_s"] = time.perf_counter() - t0
        summary.append(row)
        print(f"[bench] {name}: {row}", flush=True)
    curves_df = pd.concat(curves, ignore_index=True)
    curves_df.to_csv(args.work / "convergence.csv", index=False)
    table = pd.DataFrame(summary)
    table.to_csv(args.work / "summary.csv", index=False)
    plot(curves_df, args.work / "convergence.png")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {args.work / 'summary.csv'}, {args.work / 'convergence.csv'}, {args.work / 'convergence.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
