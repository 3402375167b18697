"""``python -m dentate_research report OUT_DIR``: rebuild the batch QC report ``OUT_DIR/report.html``.

``segment`` writes the report itself after every case; this verb rebuilds it from what is on disk (``volumes.csv``,
each case's ``X_metadata.json`` and ``X_mosaic.png``), e.g. after an interrupted batch, for an output folder written
before reports existed (missing mosaics are made from the saved crops, else the overlay PNG is shown), or while
other ``segment`` processes still write into the folder. Exit codes: 0 written, 2 not a segment output folder
(one line naming the path).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("report.html: summary (counts, run time, model card), failed and flagged scans first with their "
                     "flags explained, group plots, every scan's mosaic; one self-contained file. Exit codes: 0 "
                     "written, 2 OUT_DIR is not a segment output folder (no volumes.csv) or cannot be written.")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="output folder of 'segment -o OUT_DIR' (holds volumes.csv); report.html is written there")


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.io import DataError
    from dentate_research.inference.report import write_report

    try:
        summary = write_report(args.out_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.out_dir}: cannot write the report ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"wrote {summary.paths[0]}: {summary.line()} ({summary.seconds:.1f} s)")
    return 0
