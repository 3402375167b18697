"""``make-splits``: subject-level folds, internal/external test and leave-one-site-out sets from a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dentate_research.schema import SplitSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="case manifest (TSV/CSV)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for splits.json etc.")
    parser.add_argument("--folds", type=int, default=SplitSettings.n_folds,
                        help=f"number of cross-validation folds (default {SplitSettings.n_folds})")
    parser.add_argument("--test-fraction", type=float, default=SplitSettings.test_fraction,
                        help="fraction of each development site's subjects held out as internal test "
                             f"({SplitSettings.test_fraction})")
    parser.add_argument("--external-sites", nargs="*", default=[],
                        help="sites held out entirely as external test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.io import DataError
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.splits import make_splits, write_splits

    try:
        cases = read_manifest(args.manifest)
        splits = make_splits(cases, n_folds=args.folds, test_fraction=args.test_fraction,
                             external_sites=args.external_sites, seed=args.seed)
        splits["manifest"] = str(args.manifest)
        path = write_splits(splits, args.out, overwrite=args.overwrite)
    except (DataError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_dev = len(set(splits["folds"][0]["train"]) | set(splits["folds"][0]["val"]))
    print(f"wrote {path}: {len(cases)} cases, {n_dev} development, {len(splits['internal_test'])} internal "
          f"test, {len(splits['external_test'])} external test ({', '.join(splits['external_sites']) or 'none'})"
          f", {args.folds} folds, {len(splits['leave_one_site_out'])} leave-one-site-out sets")
    return 0
