"""Evaluate a trained two-step model on held-out scans and package it as the shipped default model.

The default model of ``segment`` (``dentate_research/assets/default_model``) is the two-step model of the CPU
study (``reproduce experiment=cpu``: fold-0 localizer + U-Net segmenter trained with the recipe on the
development sites). This script applies it, through the same :class:`DentatePredictor` that ``segment`` uses, to
scans of sites it never saw (default: the external test sites of the split file), measures Dice per side against
the truth and rater1 and the wall time per scan (2 threads; load average reported), then copies the inference
files into ``--out`` with ``MODEL_CARD.md`` and ``evaluation.json``.

    python benchmarks/package_default_model.py --localizer RUN --segmenter RUN \\
        --splits work_data/reproduce/cpu/.../splits.json --out dentate_research/assets/default_model --overwrite
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evaluate(loc: Path, seg: Path, cases: list, threads: int) -> pd.DataFrame:
    import torch

    from dentate_research.data.io import Volume, load_image, load_label
    from dentate_research.evaluation.metrics import evaluate_case
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError

    torch.set_num_threads(threads)
    predictor = DentatePredictor(loc, seg)
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        image = load_image(case.image)
        flags, status = [], "ok"
        try:
            result = predictor.predict_volume(image)
            labels, flags = result.labels, list(result.flags)
            status = result.status
        except SegmentationError as failure:
            labels, status, flags = np.zeros(image.shape, np.uint8), "failed", [failure.reason]
        seconds = time.perf_counter() - t0
        for reference in ("true", "rater1"):
            ref = load_label(case.label(reference), reference=image)
            for row in evaluate_case(Volume(labels, image.affine), ref, image):
                rows.append({"case": case.case_id, "site": case.site, "voxel_size": case.meta.get("voxel_size"),
                             "orientation": case.meta.get("orientation"), "reference": reference,
                             "side": row["side"], "dice": row["dice"], "volume_pred_mm3": row["volume_pred_mm3"],
                             "volume_ref_mm3": row["volume_ref_mm3"], "status": status, "flags": ";".join(flags),
                             "seconds": seconds})
    return pd.DataFrame(rows)


def budget(card: dict, info: dict, cfg) -> str:
    """How the stage's training ended, in words (MONAI loop: early stopping; nnU-Net: its own fixed budget)."""
    summary = info.get("training_summary") or {}
    if card["framework"] == "nnunet":
        return (f"nnU-Net's own trainer (reduced plan {card['arch_kwargs'].get('patch_size_nnunet')} patch), "
                f"{cfg.trainer.epochs} x {cfg.trainer.iterations_per_epoch} iterations, poly learning rate to 0 "
                "(nnU-Net has no early stopping; its pseudo Dice is in `segmentation/metrics.csv`)")
    best = summary.get("best") or {}
    return (f"trainer budget {cfg.trainer.epochs} x {cfg.trainer.iterations_per_epoch} iterations with early "
            f"stopping (patience {cfg.trainer.patience} validations); stopped: {summary.get('stop_reason')} after "
            f"{summary.get('iterations_run')} iterations, best validation mean Dice "
            f"{best.get('value', float('nan')):.3f}")


def card_text(loc: Path, seg: Path, df: pd.DataFrame, args: argparse.Namespace, load: tuple[float, float]) -> str:
    from omegaconf import OmegaConf

    seg_card = json.loads((seg / "model.json").read_text())
    loc_card = json.loads((loc / "model.json").read_text())
    seg_info = json.loads((seg / "run_info.json").read_text())
    loc_info = json.loads((loc / "run_info.json").read_text())
    cfg = OmegaConf.load(seg / "config.yaml")
    lines = ["# Default two-step DN model (shipped with dentate_research)", "",
             "Synthetic-phantom training data only: a demonstration model, not a clinical one.", "",
             "## Training data", "",
             f"- manifest: `{cfg.data.manifest}` (phantom preset `cpu`: 1 mm in-plane, slices up to 2 mm, 9 sites)",
             f"- segmenter: {len(seg_card['train_cases'])} training scans, {len(seg_card['val_cases'])} validation "
             f"scans (subject-level fold 0 of the development sites; reference `{seg_card['label_rater']}`)",
             f"- localizer: {len(loc_card['train_cases'])} training scans, {len(loc_card['val_cases'])} validation",
             "", "## Recipe", "",
             f"- localizer: {loc_card['arch']} {loc_card['arch_kwargs']}, {loc_card['target_spacing_mm']} mm, patch "
             f"{loc_card['patch_size']}; stopped: {loc_info['training_summary']['stop_reason']} after "
             f"{loc_info['training_summary']['iterations_run']} iterations",
             f"- segmenter: {seg_card['arch']} {seg_card['arch_kwargs']}, {seg_card['target_spacing_mm']} mm, patch "
             f"{seg_card['patch_size']}, classes {seg_card['classes']} (label scheme "
             f"`{cfg.stage.get('label_scheme', 'lateral')}`; sides from world x), crops from the localizer "
             f"(`{seg_card['crop'].get('source')}`, margin {seg_card['crop'].get('margin_mm')} mm), augmentation "
             f"with domain randomization (see `segmentation/config.yaml`), {budget(seg_card, seg_info, cfg)}; "
             f"final validation through the inference path (the {len(seg_card['val_cases'])} validation scans): "
             f"Dice {seg_card['metrics']['val_dice_left']:.3f} / {seg_card['metrics']['val_dice_right']:.3f} "
             "(left / right)",
             "", "## Held-out evaluation", "",
             f"`{' '.join(sys.argv)}` on {df['case'].nunique()} scans of the sites "
             f"{', '.join(sorted(df['site'].unique()))}, which no stage saw in training, planning or validation. "
             f"Wall time per scan (read + localize + crop + segment + post-process, {args.threads} threads) on this "
             f"machine; load average {load[0]:.2f} before, {load[1]:.2f} after.", "",
             "| reference | side | Dice mean +/- SD | min | scans with Dice < 0.5 |", "|---|---|---|---|---|"]
    for (reference, side), part in df.groupby(["reference", "side"]):
        d = part["dice"].astype(float)
        lines.append(f"| {reference} | {side} | {d.mean():.3f} +/- {d.std(ddof=1):.3f} | {d.min():.3f} | "
                     f"{int((d < 0.5).sum())} |")
    per_scan = df.groupby("case")["seconds"].first()
    status = df.groupby("case")["status"].first().value_counts().to_dict()
    lines += ["", f"Seconds per scan: mean {per_scan.mean():.2f}, max {per_scan.max():.2f}. Status: {status}.", "",
              "Per site (truth):", "", "| site | voxel size (mm) | left | right |", "|---|---|---|---|"]
    truth = df[df["reference"] == "true"]
    for site, part in truth.groupby("site"):
        vox = part["voxel_size"].iloc[0]
        left = part.loc[part["side"] == "left", "dice"].mean()
        right = part.loc[part["side"] == "right", "dice"].mean()
        lines.append(f"| {site} | {vox} | {left:.3f} | {right:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--localizer", type=Path, required=True)
    parser.add_argument("--segmenter", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True, help="split file; its external_test scans are used")
    parser.add_argument("--manifest", type=Path, default=None, help="manifest (default: the split file's)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    from dentate_research.data.manifest import read_manifest
    from dentate_research.inference.default_model import install_model

    splits = json.loads(args.splits.read_text())
    manifest = args.manifest or Path(splits["manifest"])
    by_id = {c.case_id: c for c in read_manifest(manifest)}
    cases = [by_id[i] for i in splits["external_test"]]
    if not cases:
        raise SystemExit(f"{args.splits}: no external_test scans")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise SystemExit(f"{args.out}: exists; pass --overwrite to replace the packaged model")
    load_before = os.getloadavg()[0]
    df = evaluate(args.localizer, args.segmenter, cases, args.threads)
    load_after = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:  # build beside the target, then swap in
        packaged = Path(tmp) / "packaged"
        install_model(None, packaged, localizer=args.localizer, segmenter=args.segmenter)
        (packaged / "MODEL_CARD.md").write_text(card_text(args.localizer, args.segmenter, df, args,
                                                          (load_before, load_after)))
        df.to_csv(packaged / "evaluation.csv", index=False)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.move(str(packaged), str(args.out))
    print((args.out / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
