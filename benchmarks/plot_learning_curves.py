"""Redraw learning curves (validation Dice vs iterations and wall time) from finished runs' metrics.csv.

    python benchmarks/plot_learning_curves.py --out experiments/cpu/figures/T3_learning_curves.png \\
        work_data/reproduce/cpu/runs/segmentation_{unet,attention_unet,segresnet,nnunet}_0

Labels are the run folders' names after the stage prefix. ``--continued RUN`` draws a run that continued the last
positional run from its weights (``benchmarks/train_default_model.py --refine-from``) after it: its iterations and
wall time are shifted by that run's last row.

    python benchmarks/plot_learning_curves.py --title "default model segmenter" \\
        --out docs/img/default_model_learning_curve.png work_data/default_model_robust_try1/segmentation \\
        work_data/default_model_robust/segmentation --continued work_data/default_model_refined/segmentation
 nnU-Net runs are drawn with their own per-epoch pseudo
Dice (dashed; see ``evaluation.plots.learning_curves_plot``). The figure is the one ``reproduce`` draws for T3,
made again without re-running the study (e.g. after a change of plot style).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.csv")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="T3: validation Dice (mean of sides) during training")
    parser.add_argument("--continued", type=Path, action="append", default=[],
                        help="a run that continued the last positional run (drawn after it)")
    args = parser.parse_args()
    from dentate_research.evaluation.plots import learning_curves_plot

    missing = [str(r) for r in [*args.runs, *args.continued] if not (r / "metrics.csv").is_file()]
    if missing:
        print(f"error: no metrics.csv in {missing}", file=sys.stderr)
        return 2
    curves = {_label(r): r / "metrics.csv" for r in args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        previous = pd.read_csv(args.runs[-1] / "metrics.csv")
        for run in args.continued:
            metrics = pd.read_csv(run / "metrics.csv")
            for column in ("iteration", "wall_time_s", "epoch"):
                metrics[column] = metrics[column] + previous[column].max()
            curves[f"{_label(run)} (continued)"] = Path(tmp) / f"{len(curves)}.csv"
            metrics.to_csv(curves[f"{_label(run)} (continued)"], index=False)
            previous = metrics
        print(learning_curves_plot(curves, args.out, title=args.title))
    return 0


def _label(run: Path) -> str:
    """``segmentation_unet_0`` -> ``unet``; a stage folder of a model (``model/segmentation``) -> the model's name."""
    if run.name in ("segmentation", "localization"):
        return run.parent.name
    return run.name.split("_", 1)[1].rsplit("_", 1)[0] if "_" in run.name else run.name


if __name__ == "__main__":
    raise SystemExit(main())
