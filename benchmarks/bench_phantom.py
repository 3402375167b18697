"""Phantom generation time per case (simulation + NIfTI writing) for each preset and at 1 mm whole-brain size.

Run: ``python benchmarks/bench_phantom.py [--repeats 1] [--sites siteA siteB]``.
Prints a table; single process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dentate_research.data.phantom import PRESETS, SITE_PROFILES, generate_dataset, site_voxel_size
from dentate_research.data.phantom.generate import _grid


def bench(preset, site: str, repeats: int) -> dict[str, object]:
    voxel = site_voxel_size(SITE_PROFILES[site], preset)
    shape, _, factors, fine_spacing, _ = _grid(voxel, preset.fine_mm)
    times = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate_dataset(Path(tmp) / "d", preset, seed=r, sites=[site], n_subjects_per_site=1,
                             progress=False)
            times.append(time.perf_counter() - start)
    fine_voxels = np.prod(shape) * np.prod(factors) / 1e6
    return {"preset": preset.name, "site": site, "voxel_mm": "x".join(f"{v:g}" for v in voxel),
            "fine_mm": "x".join(f"{v:.2g}" for v in fine_spacing), "grid": "x".join(map(str, shape)),
            "fine_Mvox": f"{fine_voxels:.1f}", "s_per_case": f"{np.mean(times):.2f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sites", nargs="+", default=["siteA", "siteB", "siteC"],
                        choices=list(SITE_PROFILES))
    parser.add_argument("--paper", action="store_true", help="also time the paper preset (slow, ~GBs of RAM)")
    args = parser.parse_args()
    one_mm = replace(PRESETS["small"], name="1mm-iso", in_plane_mm=1.0, max_slice_mm=1.0, fine_mm=1.0)
    one_mm_pv = replace(one_mm, name="1mm-iso/fine0.5", fine_mm=0.5)
    presets = [PRESETS["tiny"], PRESETS["small"], one_mm, one_mm_pv]
    if args.paper:
        presets.append(PRESETS["paper"])
    rows = []
    for preset in presets:
        sites = args.sites if preset.name in ("tiny", "small", "paper") else ["siteA"]
        for site in sites:
            rows.append(bench(preset, site, args.repeats))
            print(rows[-1], flush=True)
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("\n" + "  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main()
