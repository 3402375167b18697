"""Choose the demo's segmentation settings on VALIDATION scans: recipes side by side under the demo's budget.

Generates the demo's data (``cpu`` preset, 4 subjects per site, seed 0) and split (``cli.demo.demo_split``: the
last site held out, 4 validation scans), trains the demo's localizer once (its 20 % of the budget), then each
segmentation variant one after the other (never two trainings at once) under the same wall-clock budget, and
reports each variant's final validation Dice (inference path, the localizer's crops) and its iterations. The
held-out test scan is not looked at. Variants are deltas from the demo's current call (``current``).

    python benchmarks/bench_demo_recipe.py --work /tmp/demo_recipe --minutes 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# variant -> (segmenter spec delta, trainer delta, augmentation name, label scheme)
VARIANTS: dict[str, tuple[dict, dict, str, str]] = {
    "current": ({}, {}, "domain_randomization", "merged"),
    "no_dr": ({}, {}, "default", "merged"),
    "p48_b4_fg09": ({"patch_size": [48, 48, 48]}, {"batch_size": 4, "foreground_prob": 0.9},
                    "domain_randomization", "merged"),
    "p48_b4_fg09_no_dr": ({"patch_size": [48, 48, 48]}, {"batch_size": 4, "foreground_prob": 0.9}, "default",
                          "merged"),
    "p48_b4_fg09_robust": ({"patch_size": [48, 48, 48]}, {"batch_size": 4, "foreground_prob": 0.9}, "robust",
                           "merged"),
    # with two validation windows per network call the demo's segmenter stops on its plateau at ~100 s of its
    # 144-s share: a longer patience lets it use the rest (and perhaps the `robust` randomization)
    "p48_b4_fg09_no_dr_patience8": ({"patch_size": [48, 48, 48]},
                                    {"batch_size": 4, "foreground_prob": 0.9, "patience": 8}, "default", "merged"),
    "p48_b4_fg09_robust_patience8": ({"patch_size": [48, 48, 48]},
                                     {"batch_size": 4, "foreground_prob": 0.9, "patience": 8}, "robust", "merged"),
    # the default model's segmenter became an Attention U-Net (validation 0.889 vs the U-Net's 0.851 on the union)
    # (an "arch" without "arch_kwargs" takes its kwargs from configs/arch/<arch>.yaml)
    "attention_p48_b4_fg09_no_dr_patience8": ({"arch": "attention_unet", "patch_size": [48, 48, 48]},
                                              {"batch_size": 4, "foreground_prob": 0.9, "patience": 8}, "default",
                                              "merged"),
    "fg09": ({}, {"foreground_prob": 0.9}, "domain_randomization", "merged"),
    "lr3e-3": ({}, {"optimizer": {"name": None, "lr": 3e-3, "weight_decay": None, "momentum": None}},
               "domain_randomization", "merged"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=3.0, help="demo training budget (both stages)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from dentate_research.logs import console_logging

    console_logging()  # the library's messages (early stopping, fine-tuning) on stderr

    import torch

    from dentate_research.cli.demo import DEMO_EPOCHS, DEMO_ITERATIONS, DEMO_TRAINER, demo_split
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.phantom import generate_dataset
    from dentate_research.models.registry import get_arch
    from dentate_research.training import train_stage
    from dentate_research.training.stage_config import stage_config
    from dentate_research.training.two_step import DEFAULT_LOCALIZER, DEFAULT_SEGMENTER

    torch.set_num_threads(2)
    data = args.work / "data"
    manifest = data / "manifest.tsv"
    if not manifest.exists():
        manifest = generate_dataset(data, preset="cpu", seed=args.seed, n_jobs=2, n_subjects_per_site=4)
    train_ids, val_ids, test_case = demo_split(read_manifest(manifest))
    common = {"train_ids": train_ids, "val_ids": val_ids, "epochs": DEMO_EPOCHS,
              "iterations_per_epoch": DEMO_ITERATIONS, "seed": args.seed}
    loc_dir = args.work / "localization"
    if not (loc_dir / "model.json").exists():
        train_stage(stage_config(manifest, "localization", loc_dir, {**DEFAULT_LOCALIZER, "patch_size": [32] * 3},
                                 trainer={**DEMO_TRAINER, "max_minutes": 0.2 * args.minutes}, **common))
    rows = []
    for name in args.variants:
        spec_delta, trainer_delta, augmentation, scheme = VARIANTS[name]
        run_dir = args.work / f"seg_{name}"
        if not (run_dir / "model.json").exists():
            t0 = time.perf_counter()
            spec = {**DEFAULT_SEGMENTER, **spec_delta}
            if "arch" in spec_delta and "arch_kwargs" not in spec_delta:
                spec["arch_kwargs"] = get_arch(spec_delta["arch"]).default_kwargs
            cfg = stage_config(manifest, "segmentation", run_dir, spec,
                               augmentation=augmentation, label_scheme=scheme, localizer_run=loc_dir,
                               trainer={**DEMO_TRAINER, "max_minutes": 0.8 * args.minutes, **trainer_delta},
                               **common)
            train_stage(cfg)
            print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        card = json.loads((run_dir / "model.json").read_text())
        info = json.loads((run_dir / "run_info.json").read_text())
        summary = info.get("training_summary", {})
        rows.append({"variant": name, "val_dice_left": card["metrics"].get("val_dice_left"),
                     "val_dice_right": card["metrics"].get("val_dice_right"),
                     "iterations": summary.get("iterations_run"), "stop_reason": summary.get("stop_reason"),
                     "train_s": info.get("timings", {}).get("train")})
    table = pd.DataFrame(rows)
    table["val_dice_mean"] = table[["val_dice_left", "val_dice_right"]].mean(axis=1)
    table.to_csv(args.work / "summary.csv", index=False)
    print(f"validation scans {val_ids}; load average {os.getloadavg()[0]:.1f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
