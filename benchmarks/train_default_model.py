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

``--extra-train NAME=MANIFEST`` adds every scan of another manifest to the training scans (never to validation),
e.g. the phantom presets generated with another seed for the development sites only (``make-data --seed 2 --sites
siteA ... siteG``): new subjects, prefixed ``NAME_``; a held-out site in it is an error. Both stages train with the
schema's bf16 autocast and channels_last memory format (``--float32`` for the settings before the throughput
benchmark).

``--refine-from MODEL`` continues a trained model's segmenter from its best weights with a fresh poly learning-rate
decay to zero (``--refine-lr``, ``--refine-epochs`` x 50 iterations) on the same data and split, the localizer
copied unchanged: the first run stops on its plateau with the learning rate still at ~45 % of its start.

``--segmenter-arch NAME`` trains another registered architecture as the segmenter (its keyword arguments from
``configs/arch/NAME.yaml``, or ``--segmenter-kwargs JSON``), same spacing and patch as ``DEFAULT_SEGMENTER``;
``--refine-from`` keeps the refined segmenter's architecture. ``--localizer-from MODEL`` copies a trained two-step
model's localizer (e.g. the shipped one, trained on the same union and split) instead of training one, so that
candidate segmenters are compared on the same crops.

Writes ``OUT/union_manifest.tsv``, ``OUT/split.json`` (train / validation case IDs), ``OUT/refined_from/`` (with
``--refine-from``: the continued model's learning curve, card and history, copied when training starts),
``OUT/localization/`` and
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


SNAPSHOT = "refined_from"  # OUT/refined_from: the continued model's history, as it was when training started
HISTORY_FILES = ("metrics.csv", "run_info.json", "model.json", "config.yaml")  # of a segmentation run


def git_commit_of(path: Path) -> str | None:
    """The commit that last changed ``path`` when it lies inside this repository (e.g. the shipped model), else
    None."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return None
    out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h", "--", str(path.resolve())],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def snapshot_source(model: Path, out: Path) -> None:
    """Copy what the model card needs of a model being continued (its segmenter's learning curve and card, its
    training log and its own snapshot, recursively) into ``out``, with its name and commit in ``source.json``: the
    source may be a folder that is later replaced (the shipped model), and the card must still tell its history."""
    if out.exists():
        return
    (out / "segmentation").mkdir(parents=True)
    for name in HISTORY_FILES:
        shutil.copy2(model / "segmentation" / name, out / "segmentation" / name)
    if (model / "training_log.json").is_file():
        shutil.copy2(model / "training_log.json", out / "training_log.json")
    if (model / SNAPSHOT).is_dir():
        shutil.copytree(model / SNAPSHOT, out / SNAPSHOT)
    (out / "source.json").write_text(json.dumps({"name": model.resolve().name, "path": str(model),
                                                 "commit": git_commit_of(model / "segmentation")}, indent=1))


def union_manifest(presets: dict[str, Path], subjects: set[str], out: Path,
                   extra: dict[str, Path] | None = None, held_out_sites: list[str] | tuple[str, ...] = ()) -> Path:
    """One manifest of every preset's scans of ``subjects``; case IDs get the preset as prefix, subjects stay.

    ``extra`` (``NAME -> manifest``): more training scans, every scan of those manifests; case IDs AND subjects get
    ``NAME_`` as prefix (new subjects of another phantom seed, never confused with the split's subjects). A scan of
    a site of ``held_out_sites`` (the split file's external sites) in an extra manifest is an error.
    """
    from dentate_research.data.manifest import read_manifest, write_manifest

    cases = []
    for preset, manifest in presets.items():
        for case in read_manifest(manifest):
            if case.subject in subjects:
                cases.append(replace(case, case_id=f"{preset}_{case.case_id}",
                                     meta={**case.meta, "preset": preset}))
    for name, manifest in (extra or {}).items():
        for case in read_manifest(manifest):
            if case.site in held_out_sites:
                raise SystemExit(f"{manifest}: case {case.case_id} is from the held-out site {case.site}; extra "
                                 f"training data must not hold {', '.join(held_out_sites)}")
            cases.append(replace(case, case_id=f"{name}_{case.case_id}", subject=f"{name}_{case.subject}",
                                 meta={**case.meta, "preset": name}))
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
    parser.add_argument("--extra-train", action="append", default=[], metavar="NAME=MANIFEST",
                        help="more TRAINING scans (e.g. other phantom seeds of the development sites): every scan "
                             "of MANIFEST goes to training, case IDs and subjects prefixed NAME_")
    parser.add_argument("--float32", action="store_true", help="train in float32 with the default memory format "
                        "(trainer.amp=false, trainer.channels_last=false) instead of the schema's bf16 + channels_last")
    parser.add_argument("--batch-size", type=int, default=None, help="trainer.batch_size (default: the schema's)")
    parser.add_argument("--segmenter-arch", default=None,
                        help="a registered architecture for the segmenter (default: DEFAULT_SEGMENTER's)")
    parser.add_argument("--segmenter-kwargs", default=None,
                        help="JSON keyword arguments of --segmenter-arch (default: configs/arch/NAME.yaml)")
    parser.add_argument("--localizer-from", type=Path, default=None,
                        help="a two-step model folder whose localizer is copied instead of trained")
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
    segmenter = dict(DEFAULT_SEGMENTER)
    if args.segmenter_arch is not None:
        from dentate_research.models.registry import get_arch, validate_patch_size

        try:
            kwargs = (json.loads(args.segmenter_kwargs) if args.segmenter_kwargs
                      else get_arch(args.segmenter_arch).default_kwargs)
            validate_patch_size(args.segmenter_arch, segmenter["patch_size"], kwargs)
        except (KeyError, ValueError) as err:
            raise SystemExit(f"--segmenter-arch {args.segmenter_arch} / --segmenter-kwargs "
                             f"{args.segmenter_kwargs}: {err}") from None
        segmenter.update(arch=args.segmenter_arch, arch_kwargs=kwargs)
    elif args.refine_from is not None:  # continue the refined model's own architecture
        card = json.loads((args.refine_from / "segmentation" / "model.json").read_text())
        segmenter.update(arch=card["arch"], arch_kwargs=card["arch_kwargs"], patch_size=card["patch_size"])
    if args.localizer_from is not None and args.refine_from is not None:
        raise SystemExit("--localizer-from and --refine-from both give the localizer: use one")
    args.out.mkdir(parents=True, exist_ok=True)
    fold = load_split(args.splits, args.fold)
    manifest = args.out / "union_manifest.tsv"
    extra = dict(item.split("=", 1) for item in args.extra_train)
    if not manifest.exists():
        union_manifest({"cpu": args.cpu, "hard": args.hard}, set(fold.train) | set(fold.val), manifest,
                       {name: Path(path) for name, path in extra.items()},
                       json.loads(args.splits.read_text())["external_sites"])
    cases = read_manifest(manifest)
    presets = {c.meta.get("preset") for c in cases}
    if presets != {"cpu", "hard", *extra}:  # an --out of an earlier call with other --extra-train
        raise SystemExit(f"{manifest} holds the presets {sorted(map(str, presets))}, this call asks for "
                         f"{sorted({'cpu', 'hard', *extra})}: use another --out")
    extra_subjects = {c.subject for c in cases if any(c.subject.startswith(f"{n}_") for n in extra)}
    train = [c.case_id for c in cases if c.subject in set(fold.train) | extra_subjects]
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
        snapshot_source(args.refine_from, args.out / SNAPSHOT)
        args.stages = ["segmentation"]
    if args.localizer_from is not None:
        if not (args.localizer_from / "localization" / "model.json").is_file():
            raise SystemExit(f"--localizer-from {args.localizer_from}: no localization/model.json there")
        if not (args.out / "localization").exists():
            shutil.copytree(args.localizer_from / "localization", args.out / "localization")
        log["localization"] = {"copied_from": str(args.localizer_from),
                               "commit": git_commit_of(args.localizer_from / "localization")}
        args.stages = [s for s in args.stages if s != "localization"]
    for stage in args.stages:
        is_seg = stage == "segmentation"
        refine = is_seg and args.refine_from is not None
        cfg = stage_config(manifest, stage, args.out / stage, segmenter if is_seg else DEFAULT_LOCALIZER,
                           train_ids=train, val_ids=val, epochs=args.refine_epochs if refine else 60,
                           iterations_per_epoch=50, lr=args.refine_lr if refine else None,
                           augmentation=args.augmentation, label_scheme="merged" if is_seg else "lateral",
                           localizer_run=args.out / "localization" if is_seg else None,
                           label_rater=args.label_rater,
                           trainer={"val_every": 2, "min_delta": 0.005,
                                    **({"amp": False, "channels_last": False} if args.float32 else {}),
                                    **({"batch_size": args.batch_size} if args.batch_size else {}),
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
                      "augmentation": args.augmentation, "amp": cfg["trainer"]["amp"],
                      "channels_last": cfg["trainer"]["channels_last"],
                      "batch_size": cfg["trainer"].get("batch_size"), "extra_train": extra,
                      **({"arch": segmenter["arch"], "arch_kwargs": segmenter["arch_kwargs"]} if is_seg else {}),
                      **({"refined_from": str(args.refine_from), "lr": args.refine_lr,
                          "epochs": args.refine_epochs} if refine else {})}
        log_path.write_text(json.dumps(log, indent=1))
        print(f"[train_default_model] {stage}: {log[stage]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
