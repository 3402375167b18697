"""Redraw learning curves (validation Dice vs iterations and wall time) from finished runs' metrics.csv.

    python benchmarks/plot_learning_curves.py --out experiments/cpu/figures/T3_learning_curves.png \\
        work_data/reproduce/cpu/runs/segmentation_{unet,attention_unet,segresnet,nnunet}_0

Labels are the run folders' names after the stage prefix. nnU-Net runs are drawn with their own per-epoch pseudo
Dice (dashed; see ``evaluation.plots.learning_curves_plot``). The figure is the one ``reproduce`` draws for T3,
made again without re-running the study (e.g. after a change of plot style).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.csv")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="T3: validation Dice (mean of sides) during training")
    args = parser.parse_args()
    from dentate_research.evaluation.plots import learning_curves_plot

    missing = [str(r) for r in args.runs if not (r / "metrics.csv").is_file()]
    if missing:
        print(f"error: no metrics.csv in {missing}", file=sys.stderr)
        return 2
    curves = {r.name.split("_", 1)[1].rsplit("_", 1)[0]: r / "metrics.csv" for r in args.runs}
    print(learning_curves_plot(curves, args.out, title=args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
