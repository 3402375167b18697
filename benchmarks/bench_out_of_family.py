"""A two-step model on QSM that the phantom generator did not make: a robustness check before real data.

The scans come from ``tests/synthetic_dn.make_scan``, an anatomy model written independently of
``dentate_research.data.phantom`` (ellipsoid brain, cerebellum and DN, no lamina, no dipole reconstruction,
plain Gaussian noise, a random rigid pose per scan), at the voxel sizes and storage orientations the independent
test family uses (1 mm, 0.8 x 0.8 x 2 mm, 1.2 mm; half stored LAS). Each scan goes through the same
DentatePredictor as ``segment``; the table reports Dice per side against the ellipsoid truth, the status and QC
flags, and whether any scan came back "ok" with an empty or misplaced DN (Dice < 0.3 on a side). The ellipsoid
DN is not the lamina the model learned, so Dice here measures transfer, not the model's accuracy. This is the
``ellipsoid`` bench of ``benchmarks/bench_default_model.py`` (which also scores the other benches side by side).

    python benchmarks/bench_out_of_family.py --out work_data/out_of_family        # shipped default model
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="two-step model folder or 'default' (shipped)")
    parser.add_argument("--seeds", type=int, default=4, help="scans per voxel size (half stored LAS)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from bench_default_model import ellipsoid_scans, score

    table = score(str(args.model), args.model, ellipsoid_scans(args.out / "scans", args.seeds))
    table = table.rename(columns={"site": "voxel_size_tag"})
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
