"""A two-step model on QSM that the phantom generator did not make: a robustness check before real data.

The scans come from ``tests/synthetic_dn.make_scan``, an anatomy model written independently of
``dentate_research.data.phantom`` (ellipsoid brain, cerebellum and DN, no lamina, no dipole reconstruction,
plain Gaussian noise, a random rigid pose per scan), at the voxel sizes and storage orientations the independent
test family uses (1 mm, 0.8 x 0.8 x 2 mm, 1.2 mm; half stored LAS). Each scan goes through the same
DentatePredictor as ``segment``; the table reports Dice per side against the ellipsoid truth, the status and QC
flags, and whether any scan came back "ok" with an empty or misplaced DN (Dice < 0.3 on a side). The ellipsoid
DN is not the lamina the model learned, so Dice here measures transfer, not the model's accuracy.

    python benchmarks/bench_out_of_family.py --out work_data/out_of_family        # shipped default model
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACINGS = {"1mm": (1.0, 1.0, 1.0), "0.8x0.8x2mm": (0.8, 0.8, 2.0), "1.2mm": (1.2, 1.2, 1.2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="two-step model folder or 'default' (shipped)")
    parser.add_argument("--seeds", type=int, default=4, help="scans per voxel size (half stored LAS)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from dentate_research.data.io import Volume, load_image, load_label, save_nifti
    from dentate_research.evaluation.metrics import evaluate_case
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError
    from dentate_research.training.finetune import resolve_init_run
    from tests.synthetic_dn import make_scan

    torch.set_num_threads(2)
    predictor = DentatePredictor(resolve_init_run(args.model, "localization"),
                                 resolve_init_run(args.model, "segmentation"))
    rows = []
    for tag, spacing in SPACINGS.items():
        for seed in range(args.seeds):
            image, labels, _, affine = make_scan(1000 + seed, spacing=spacing, max_rot_deg=8.0)
            orientation = "LAS" if seed % 2 else "RAS"
            if orientation == "LAS":  # same world, array stored with x running right-to-left
                flip = np.diag([-1.0, 1.0, 1.0, 1.0])
                flip[0, 3] = image.shape[0] - 1
                image, labels, affine = image[::-1].copy(), labels[::-1].copy(), affine @ flip
            case = f"{tag}_{orientation}_{seed}"
            img_path = save_nifti(image, affine, args.out / "scans" / f"{case}.nii.gz")
            lab_path = save_nifti(labels, affine, args.out / "scans" / f"{case}_dn.nii.gz", is_label=True)
            volume = load_image(img_path)
            t0 = time.perf_counter()
            try:
                result = predictor.predict_volume(volume)
                pred, status, flags = result.labels, result.status, list(result.flags)
            except SegmentationError as failure:
                pred, status, flags = np.zeros(volume.shape, np.uint8), "failed", [failure.reason]
            seconds = time.perf_counter() - t0
            ref = load_label(lab_path, reference=volume)
            for row in evaluate_case(Volume(pred, volume.affine), ref, volume):
                rows.append({"case": case, "voxel_size": tag, "orientation": orientation, "side": row["side"],
                             "dice": row["dice"], "volume_pred_mm3": row["volume_pred_mm3"],
                             "volume_ref_mm3": row["volume_ref_mm3"], "status": status, "flags": ";".join(flags),
                             "seconds": round(seconds, 2)})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "per_case.csv", index=False)
    silent = table[(table["status"] == "ok") & (table["dice"].fillna(0) < 0.3)]
    summary = table.groupby(["voxel_size", "side"])["dice"].agg(["mean", "std", "min"]).round(3)
    print(summary.to_string())
    statuses = table.drop_duplicates("case")["status"].value_counts().to_dict()
    print(f"overall Dice left {table[table.side == 'left'].dice.mean():.3f}, right "
          f"{table[table.side == 'right'].dice.mean():.3f}; statuses {statuses}; "
          f"'ok' with an empty/misplaced side: {silent['case'].nunique()}; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
