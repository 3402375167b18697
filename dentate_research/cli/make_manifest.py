"""``make-manifest``: the case manifest from a BIDS dataset, QSM-pipeline derivatives or a plain folder.

Examples::

    python -m dentate_research make-manifest bids/ -o manifest.tsv                     # *_Chimap.nii[.gz]
    python -m dentate_research make-manifest bids/ --derivatives qsmxt -o manifest.tsv # bids/derivatives/qsmxt/
    python -m dentate_research make-manifest bids/derivatives/qsmxt -o manifest.tsv \\
        --labels "../manual/sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_desc-dentate_dseg.nii.gz" --label-map 3:1,4:2
    python -m dentate_research make-manifest scans/ --pattern "*/qsm.nii.gz" --site clinicA -o manifest.tsv

Exit codes: 0 written, 2 bad input (the message names the file, the value and what is allowed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dentate_research.data.bids import QSM_SUFFIX, UNITS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1]
    parser.add_argument("root", type=Path, help="BIDS dataset, derivatives folder or plain folder of NIfTI maps")
    parser.add_argument("-o", "--out", required=True, type=Path, help="manifest TSV to write")
    parser.add_argument("--suffix", default=QSM_SUFFIX,
                        help=f"BIDS suffix of the susceptibility maps (default {QSM_SUFFIX}, BIDS qMRI, ppm)")
    parser.add_argument("--pattern", default=None,
                        help="glob relative to ROOT instead of the suffix (plain folders: the first folder below "
                             "ROOT names the subject, else the file name)")
    parser.add_argument("--derivatives", default=None, metavar="NAME",
                        help="read the maps from ROOT/derivatives/NAME/ (a pipeline's outputs, e.g. qsmxt); without "
                             "it derivatives/, sourcedata/ and hidden folders of ROOT are skipped")
    parser.add_argument("--labels", default=None,
                        help="manual tracing path template relative to ROOT; placeholders {sub} {ses} {case} {stem}")
    parser.add_argument("--label-map", default=None,
                        help="remap tracing values FOREIGN:OURS,... to 1 = left DN, 2 = right DN (e.g. 3:1,4:2)")
    parser.add_argument("--rater", default="manual", help="name of the tracings' label column (label_<rater>)")
    parser.add_argument("--participants", type=Path, default=None,
                        help="participants.tsv (default: in ROOT or the BIDS dataset root above it)")
    site = parser.add_mutually_exclusive_group()
    site.add_argument("--site-column", default="site", help="participants.tsv column naming the site (default site)")
    site.add_argument("--site-entity", default=None, help="file-name entity naming the site (e.g. acq)")
    site.add_argument("--site", default=None, help="one site name for every scan")
    parser.add_argument("--units", default=None, choices=UNITS,
                        help="image units when not ppm (maps implausible for ppm are refused without it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest")


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.bids import build_manifest
    from dentate_research.data.io import DataError
    from dentate_research.data.manifest import read_manifest

    try:
        path = build_manifest(args.root, args.out, suffix=args.suffix, pattern=args.pattern, labels=args.labels,
                              label_map=args.label_map, rater=args.rater, site_column=args.site_column,
                              site_entity=args.site_entity, site=args.site, units=args.units,
                              participants=args.participants, derivatives=args.derivatives,
                              overwrite=args.overwrite)
        cases = read_manifest(path)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sites = sorted({c.site for c in cases})
    traced = sum(1 for c in cases if c.labels)
    print(f"manifest: {path} ({len(cases)} scans, {len({c.subject for c in cases})} subjects, sites {sites}, "
          f"{traced} with tracings '{args.rater}')")
    return 0
