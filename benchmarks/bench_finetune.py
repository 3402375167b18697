"""Fine-tuning a two-step model on a new site: Dice on that site's held-out scans before and after.

A site the model never saw (default siteH, an external site of the shipped model's split) is generated afresh
(new seed, so none of its subjects is one the model was evaluated on): ``--n-tune`` traced scans adapt the
segmentation stage (``experiment=finetune``: init_from the model, lr 1e-4, early stopping, ``--minutes`` budget),
one of them validates; ``--n-test`` other subjects are segmented before and after, through the same
DentatePredictor that ``segment`` uses (the model's own localizer both times). Writes per_case.csv, summary.md,
learning_curve.png and the fine-tuned run into ``--out``.

    python benchmarks/bench_finetune.py --out work_data/bench_finetune            # shipped model, siteH
    python benchmarks/bench_finetune.py --preset hard --site siteI --n-tune 6 --out work_data/bench_finetune_hard
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


def dice_table(loc: Path, seg: Path, cases: list, rater: str, method: str) -> pd.DataFrame:
    from dentate_research.data.io import Volume, load_image, load_label
    from dentate_research.evaluation.metrics import evaluate_case
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError

    predictor = DentatePredictor(loc, seg)
    rows = []
    for case in cases:
        image = load_image(case.image)
        try:
            result = predictor.predict_volume(image)
            labels, status = result.labels, result.status
        except SegmentationError:
            labels, status = np.zeros(image.shape, np.uint8), "failed"
        ref = load_label(case.label(rater), reference=image)
        for row in evaluate_case(Volume(labels, image.affine), ref, image):
            rows.append({"method": method, "case": case.case_id, "side": row["side"], "dice": row["dice"],
                         "volume_pred_mm3": row["volume_pred_mm3"], "volume_ref_mm3": row["volume_ref_mm3"],
                         "status": status})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="two-step model folder, or 'default' (shipped)")
    parser.add_argument("--site", default="siteH")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "hard"),
                        help="phantom preset of the new site's scans (hard: partial coverage, veins, ringing, ...)")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed of the new site's scans")
    parser.add_argument("--n-tune", type=int, default=12, help="traced scans for fine-tuning (one validates)")
    parser.add_argument("--n-test", type=int, default=8, help="held-out scans of the site")
    parser.add_argument("--minutes", type=float, default=5.0, help="fine-tuning wall-clock budget")
    parser.add_argument("--rater", default="rater1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from dentate_research.logs import console_logging

    console_logging()  # the library's messages (early stopping, fine-tuning) on stderr

    import torch

    from dentate_research.cli.reproduce import compose_train_config
    from dentate_research.data.atomic import write_text_atomic
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.phantom import generate_dataset
    from dentate_research.training.api import train_stage
    from dentate_research.training.finetune import resolve_init_run

    torch.set_num_threads(args.threads)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; choose a new folder", file=sys.stderr)
        return 2
    loc, seg = resolve_init_run(args.model, "localization"), resolve_init_run(args.model, "segmentation")
    t0 = time.perf_counter()
    manifest = generate_dataset(args.out / "data", preset=args.preset, seed=args.seed, n_jobs=2, sites=[args.site],
                                n_subjects_per_site=args.n_tune + args.n_test)
    cases = read_manifest(manifest)
    subjects = sorted({c.subject for c in cases})
    tune_subjects, test_subjects = subjects[: args.n_tune], subjects[args.n_tune:]
    tune = [c.case_id for c in cases if c.subject in tune_subjects]
    val, train = tune[-1:], tune[:-1]
    test = [c for c in cases if c.subject in test_subjects]
    print(f"[finetune] {args.site}: {len(train)} tune + {len(val)} val scans, {len(test)} test scans "
          f"({time.perf_counter() - t0:.0f} s to generate)", flush=True)

    before = dice_table(loc, seg, test, args.rater, "before")
    run_dir = args.out / "finetuned_segmentation"
    arch = json.loads((seg / "model.json").read_text())["arch"]  # +arch must name the weights' architecture
    cfg = compose_train_config([
        "experiment=finetune", f"+arch={arch}", f"init_from={seg}", "stage=segmentation", "data=manifest",
        f"data.manifest={manifest}", f"data.label_rater={args.rater}", "split=explicit",
        f"split.train=[{','.join(train)}]", f"split.val=[{','.join(val)}]", f"paths.run_dir={run_dir}",
        f"trainer.max_minutes={args.minutes}", "trainer.device=cpu",
        "stage.crop.source=localizer", f"stage.crop.localizer_run={loc}"])
    t0 = time.perf_counter()
    train_stage(cfg)
    tune_s = time.perf_counter() - t0
    after = dice_table(loc, run_dir, test, args.rater, "after")
    table = pd.concat([before, after])
    table.to_csv(args.out / "per_case.csv", index=False)
    summary = table.groupby(["method", "side"])["dice"].agg(["mean", "std", "min"]).reset_index()
    load = os.getloadavg()
    metrics = pd.read_csv(run_dir / "metrics.csv")
    lines = [f"# Fine-tuning on {args.site} ({args.preset} phantoms, seed {args.seed}), reference {args.rater}", "",
             f"Model {args.model}; {len(train)} tune + {len(val)} val scans, {len(test)} held-out test scans; "
             f"fine-tuning {tune_s / 60:.1f} min ({int(metrics['iteration'].max())} iterations, load average "
             f"{load[0]:.1f}).", "", "| method | side | Dice mean | SD | min |", "|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.side} | {r['mean']:.3f} | {r['std']:.3f} | {r['min']:.3f} |"
              for _, r in summary.iterrows()]
    write_text_atomic(args.out / "summary.md", "\n".join(lines) + "\n")
    from dentate_research.evaluation.plots import learning_curves_plot

    learning_curves_plot({"fine-tuning": run_dir / "metrics.csv"}, args.out / "learning_curve.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
