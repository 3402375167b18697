"""``export-nnunet``: write a manifest's cases in the nnU-Net v2 raw dataset layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="case manifest (TSV/CSV)")
    parser.add_argument("--out", required=True, type=Path, help="nnU-Net raw folder (nnUNet_raw)")
    parser.add_argument("--dataset-id", type=int, default=None,
                        help="nnU-Net dataset ID, 1-999 (default: dataset_id of configs/arch/nnunet.yaml, 501)")
    parser.add_argument("--name", default=None,
                        help="dataset name (default: dataset_name of configs/arch/nnunet.yaml, Dentate)")
    parser.add_argument("--rater", default="true",
                        help="labels to export: 'true' for phantoms, a rater name (e.g. rater1) for real "
                             "data")
    parser.add_argument("--cases-file", type=Path, default=None,
                        help="text file with one training case ID per line (others go to imagesTs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files of an existing dataset folder")


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.io import DataError
    from dentate_research.data.nnunet_export import export_nnunet

    train_ids = None
    if args.cases_file is not None:
        if not args.cases_file.exists():
            print(f"error: --cases-file {args.cases_file} not found", file=sys.stderr)
            return 2
        train_ids = [line.strip() for line in args.cases_file.read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
    try:
        folder = export_nnunet(args.manifest, args.out, args.dataset_id, args.name, args.rater, train_ids,
                               overwrite=args.overwrite)
    except (DataError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"nnU-Net dataset: {folder}")
    return 0
