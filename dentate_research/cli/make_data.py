"""``make-data``: generate the synthetic multi-site QSM phantom data set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dentate_research.data.phantom import PRESETS, SITE_PROFILES

    parser.add_argument("--out", required=True, type=Path, help="output folder (must be empty or absent)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="size: tiny (tests, seconds), small (demo, minutes), "
                             "paper (328 subjects, ~1 h per core)")
    parser.add_argument("--seed", type=int, default=0, help="master seed (same seed -> identical arrays)")
    parser.add_argument("--n-jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--n-subjects-per-site", type=int, default=None, help="override the preset's count")
    parser.add_argument("--sites", nargs="+", default=None, choices=list(SITE_PROFILES), metavar="SITE",
                        help=f"subset of sites ({', '.join(SITE_PROFILES)})")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    parser.add_argument("--png", action="store_true",
                        help="also save OUT/phantom_sites.png and OUT/phantom_dn.png (slices through the DN)")


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.phantom import generate_dataset

    out: Path = args.out
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} exists and is not a folder", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: output folder {out} is not empty; choose a new folder or pass --overwrite to replace "
              "its phantom files", file=sys.stderr)
        return 2
    manifest = generate_dataset(out, preset=args.preset, seed=args.seed, n_jobs=args.n_jobs,
                                n_subjects_per_site=args.n_subjects_per_site, sites=args.sites,
                                overwrite=args.overwrite)
    print(f"manifest: {manifest}")
    if args.png:
        from dentate_research.data.phantom.viz import save_dn_figure, save_sites_figure

        print(f"figure: {save_sites_figure(manifest, out / 'phantom_sites.png')}")
        print(f"figure: {save_dn_figure(manifest, out / 'phantom_dn.png')}")
    return 0
