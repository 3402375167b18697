"""Phantom generation time per case (simulation + NIfTI writing) for each preset and at 1 mm whole-brain size, and
the hard-case preset against the ``cpu`` preset it extends, side by side.

Run: ``python benchmarks/bench_phantom.py [--repeats 1] [--sites siteA siteB]``.
``python benchmarks/bench_phantom.py --hard-vs-cpu [--subjects 2] [--sites ...]`` times only ``hard`` vs ``cpu``
(same sites, seeds and subject indices, presets alternating site by site so both see the same machine load) and
prints the per-case means, their ratio (target <= 1.5) and the load average before and after.
Prints a table; single process.
"""

from __future__ import annotations

import argparse
import json
import os
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


def hard_vs_cpu(sites: list[str], subjects: int, repeats: int) -> dict[str, object]:
    """Mean generation time per case of ``hard`` and ``cpu`` on the same sites, seeds and subject indices."""
    load_before = os.getloadavg()
    per_case: dict[str, list[float]] = {"cpu": [], "hard": []}
    for r in range(repeats):
        for site in sites:
            for name in ("cpu", "hard") if (r + sites.index(site)) % 2 == 0 else ("hard", "cpu"):
                with tempfile.TemporaryDirectory() as tmp:
                    manifest = generate_dataset(Path(tmp) / "d", name, seed=r, sites=[site],
                                                n_subjects_per_site=subjects, progress=False)
                    summary = json.loads((manifest.parent / "dataset_summary.json").read_text())
                per_case[name] += list(summary["timings_s"]["per_case"].values())
                print(f"{name:5s} {site}: {np.mean(list(summary['timings_s']['per_case'].values())):.2f} s/case",
                      flush=True)
    load_after = os.getloadavg()
    cpu, hard = float(np.mean(per_case["cpu"])), float(np.mean(per_case["hard"]))
    return {"sites": sites, "cases_per_preset": len(per_case["cpu"]), "cpu_s_per_case": round(cpu, 2),
            "hard_s_per_case": round(hard, 2), "ratio_hard_over_cpu": round(hard / cpu, 2),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sites", nargs="+", default=["siteA", "siteB", "siteC"],
                        choices=list(SITE_PROFILES))
    parser.add_argument("--paper", action="store_true", help="also time the paper preset (slow, ~GBs of RAM)")
    parser.add_argument("--hard-vs-cpu", action="store_true",
                        help="only time the hard preset against the cpu preset (ratio and load average)")
    parser.add_argument("--subjects", type=int, default=2, help="subjects per site in --hard-vs-cpu")
    args = parser.parse_args()
    if args.hard_vs_cpu:
        result = hard_vs_cpu(args.sites, args.subjects, args.repeats)
        print(json.dumps(result, indent=1))
        return
    one_mm = replace(PRESETS["small"], name="1mm-iso", in_plane_mm=1.0, max_slice_mm=1.0, fine_mm=1.0)
    one_mm_pv = replace(one_mm, name="1mm-iso/fine0.5", fine_mm=0.5)
    presets = [PRESETS["tiny"], PRESETS["small"], one_mm, one_mm_pv, PRESETS["cpu"], PRESETS["hard"]]
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
