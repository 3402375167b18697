"""Train the default two-step model on the union of the easy (``cpu``) and ``hard`` phantom presets.

The recipe of the shipped model (issue "a default model that holds on QSM our generator did not make"):

- data: both phantom presets (same seed, so the same subjects with different phantom effects), the development
  sites only; train / validation = the subjects of fold ``--fold`` of the CPU study's split file for BOTH presets
  (a subject's easy and hard scans stay on one side of the split); the internal test subjects and the external
  sites (siteH, siteI) are never read;
- localizer: ``DEFAULT_LOCALIZER`` (4 mm, 32^3 patches) with ``augmentation=robust`` (left-right mirror without a
  label swap: the cerebellum has no sides), early stopping on its validation plateau;
- segmenter: ``DEFAULT_SEGMENTER`` (1 mm, 64^3 patches), one merged DN class (sides from world geometry per
  connected component), trained and validated on the crops the localizer above cuts, ``augmentation=robust``,
  early stopping after ``--segmenter-patience`` validations (every 100 iterations) without a mean-Dice gain >
  0.005, under a wall-clock cap. With this much randomization the validation Dice moves by +/-0.03 between
  validations, and patience 4 stopped a first run at 700 iterations (0.80, still rising); the default is 8.

``--refine-from MODEL`` continues a trained model's segmenter from its best weights with a fresh poly learning-rate
decay to zero (``--refine-lr``, ``--refine-epochs`` x 50 iterations) on the same data and split, the localizer
copied unchanged: the first run stops on its plateau with the learning rate still at ~45 % of its start.

Writes ``OUT/union_manifest.tsv``, ``OUT/split.json`` (train / validation case IDs), ``OUT/localization/`` and
``OUT/segmentation/`` (run folders with ``metrics.csv``: the learning curves) and ``OUT/training_log.json`` (load
average and wall time per stage).

    python benchmarks/train_default_model.py --cpu work_data/data_cpu_seed0/manifest.tsv \\
        --hard work_data/data_hard_seed0/manifest.tsv --splits experiments/cpu/splits/splits.json \\
        --out work_data/default_model_robust
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def union_manifest(presets: dict[str, Path], subjects: set[str], out: Path) -> Path:
    """One manifest of every preset's scans of ``subjects``; case IDs get the preset as prefix, subjects stay."""
    from dentate_research.data.manifest import read_manifest, write_manifest

    cases = []
    for preset, manifest in presets.items():
        for case in read_manifest(manifest):
            if case.subject in subjects:
                cases.append(replace(case, case_id=f"{preset}_{case.case_id}",
                                     meta={**case.meta, "preset": preset}))
    return write_manifest(cases, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", type=Path, required=True, help="manifest of the easy `cpu` phantom preset")
    parser.add_argument("--hard", type=Path, required=True, help="manifest of the `hard` phantom preset")
    parser.add_argument("--splits", type=Path, required=True, help="the CPU study's splits.json")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--augmentation", default="robust", help="configs/augmentation name")
    parser.add_argument("--label-rater", default="rater1")
    parser.add_argument("--localizer-minutes", type=float, default=10.0)
    parser.add_argument("--segmenter-minutes", type=float, default=25.0)
    parser.add_argument("--localizer-patience", type=int, default=4, help="validations without gain (localizer)")
    parser.add_argument("--segmenter-patience", type=int, default=8, help="validations without gain (segmenter)")
    parser.add_argument("--stages", nargs="+", default=["localization", "segmentation"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refine-from", type=Path, default=None,
                        help="a two-step model folder: copy its localizer and continue its segmenter from its best "
                             "weights with a fresh poly decay (--refine-lr, --refine-epochs x 50 iterations)")
    parser.add_argument("--refine-lr", type=float, default=4e-4)
    parser.add_argument("--refine-epochs", type=int, default=20)
    args = parser.parse_args()
    from dentate_research.logs import console_logging

    console_logging()  # the library's messages (early stopping, fine-tuning) on stderr

    import torch

    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.splits import load_split
    from dentate_research.training.api import train_stage
    from dentate_research.training.stage_config import stage_config
    from dentate_research.training.two_step import DEFAULT_LOCALIZER, DEFAULT_SEGMENTER

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    fold = load_split(args.splits, args.fold)
    manifest = args.out / "union_manifest.tsv"
    if not manifest.exists():
        union_manifest({"cpu": args.cpu, "hard": args.hard}, set(fold.train) | set(fold.val), manifest)
    cases = read_manifest(manifest)
    train = [c.case_id for c in cases if c.subject in set(fold.train)]
    val = [c.case_id for c in cases if c.subject in set(fold.val)]
    (args.out / "split.json").write_text(json.dumps({"train": train, "val": val, "fold": args.fold,
                                                     "splits": str(args.splits)}, indent=1))
    print(f"[train_default_model] {len(train)} training and {len(val)} validation scans "
          f"({len(set(fold.train))} / {len(set(fold.val))} subjects, both presets)", flush=True)
    log_path = args.out / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    if args.refine_from is not None:
        if not (args.out / "localization").exists():
            shutil.copytree(args.refine_from / "localization", args.out / "localization")
        args.stages = ["segmentation"]
    for stage in args.stages:
        is_seg = stage == "segmentation"
        refine = is_seg and args.refine_from is not None
        cfg = stage_config(manifest, stage, args.out / stage, DEFAULT_SEGMENTER if is_seg else DEFAULT_LOCALIZER,
                           train_ids=train, val_ids=val, epochs=args.refine_epochs if refine else 60,
                           iterations_per_epoch=50, lr=args.refine_lr if refine else None,
                           augmentation=args.augmentation, label_scheme="merged" if is_seg else "lateral",
                           localizer_run=args.out / "localization" if is_seg else None,
                           label_rater=args.label_rater,
                           trainer={"val_every": 2, "min_delta": 0.005,
                                    "patience": args.segmenter_patience if is_seg else args.localizer_patience,
                                    "max_minutes": args.segmenter_minutes if is_seg else args.localizer_minutes})
        if refine:  # the segmenter's weights, settings and card come from the model being refined
            cfg["init_from"] = str(args.refine_from / "segmentation")
        load_before = os.getloadavg()
        t0 = time.time()
        train_stage(cfg)
        log[stage] = {"wall_s": round(time.time() - t0, 1), "load_before": load_before,
                      "load_after": os.getloadavg(), "max_minutes": cfg["trainer"]["max_minutes"],
                      "patience": cfg["trainer"]["patience"],
                      "augmentation": args.augmentation,
                      **({"refined_from": str(args.refine_from), "lr": args.refine_lr,
                          "epochs": args.refine_epochs} if refine else {})}
        log_path.write_text(json.dumps(log, indent=1))
        print(f"[train_default_model] {stage}: {log[stage]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
