"""``python -m dentate_research VERB ...``: dispatch to one verb module.

Verb modules are imported lazily so that ``--help`` is instant. Each argparse verb module defines
``add_arguments(parser)`` and ``run(args) -> int``; Hydra verbs (``train``, ``reproduce``) define
``run_hydra(argv) -> int`` and receive the remaining argv untouched (Hydra overrides such as ``arch=nnunet``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help, uses Hydra)
VERBS: dict[str, tuple[str, str, bool]] = {
    "make-data": ("dentate_research.cli.make_data", "generate the synthetic multi-site QSM phantom data set", False),
    "make-manifest": ("dentate_research.cli.make_manifest",
                      "build the case manifest from a BIDS dataset, derivatives or a plain folder of QSM maps", False),
    "make-splits": ("dentate_research.cli.make_splits",
                    "write subject-level train/val folds, test, external and leave-one-site-out splits", False),
    "export-nnunet": ("dentate_research.cli.export_nnunet",
                      "export a manifest to the nnU-Net raw dataset layout", False),
    "train": ("dentate_research.cli.train", "train a stage (Hydra: arch=nnunet|unet|unetr|..., stage=...)", True),
    "list-archs": ("dentate_research.cli.list_archs", "list the architectures 'train arch=NAME' accepts", False),
    "segment": ("dentate_research.cli.segment", "two-step DN segmentation of QSM NIfTI files", False),
    "report": ("dentate_research.cli.report", "rebuild report.html, the QC report of a segment output folder", False),
    "evaluate": ("dentate_research.cli.evaluate",
                 "metrics, rater reliability, baseline comparison and statistics", False),
    "reproduce": ("dentate_research.cli.reproduce", "run the paper's studies and write its tables (Hydra)", True),
    "demo": ("dentate_research.cli.demo", "generate small phantoms, train a tiny two-step model, segment a scan",
             False),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dentate_research",
        description="Dentate nucleus segmentation in QSM MRI: data, training, inference, evaluation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {v:<14} {h}" for v, (_, h, _) in VERBS.items())
        + "\n\nRun 'python -m dentate_research VERB --help' for a verb's options.",
    )
    parser.add_argument("verb", nargs="?", help="one of: " + ", ".join(VERBS))
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        from dentate_research import __version__

        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        top.print_usage(sys.stderr)
        print(f"error: unknown verb '{verb}'; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module_name, help_text, hydra = VERBS[verb]
    try:
        module = importlib.import_module(module_name)
        if hydra:
            return int(module.run_hydra(rest) or 0)
        parser = argparse.ArgumentParser(prog=f"python -m dentate_research {verb}", description=help_text)
        module.add_arguments(parser)
        args = parser.parse_args(rest)
        from dentate_research.logs import console_logging

        console_logging()  # the library's messages (it logs, never prints) on stderr
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C outside a verb's own handling: one line, no traceback, exit 130
        print(f"interrupted ({verb})", file=sys.stderr)
        return 130
