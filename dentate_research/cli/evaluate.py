"""``evaluate``: metrics, baselines, method comparison and rater reliability.

Sub-commands::

    evaluate metrics     --manifest M --pred-dir P --method NAME [--reference rater1] --out OUT
    evaluate template    --manifest M [--splits S --fold 0 --part train] --out TEMPLATE_DIR
    evaluate baseline    --manifest M --baseline classical|atlas --template T [--splits S --part test] --out OUT
    evaluate compare     TABLE.csv [TABLE.csv ...] --out OUT [--metrics dice hd95_mm]
    evaluate reliability --manifest M --out OUT

Predictions are looked up as ``P/<case_id>_seg.nii.gz`` or ``P/<case_id>/<case_id>_seg.nii.gz`` (DentateSeg
layout), and in ``segment``'s own layout ``P/X/X_seg.nii.gz`` for an image file ``X.nii.gz`` whose name is not
the case ID (by the image file name, or by the input path recorded in ``P/X/X_metadata.json``). A missing
prediction is an error naming the case and the paths looked for, unless ``--allow-missing`` (then the case is
counted as missing in the report, never silently dropped).

Outputs are never replaced without ``--overwrite``: an ``--out`` folder that already holds a file the
sub-command writes (per_case.csv, comparison.csv, ...) is refused before any work (exit 2). ``compare`` reports
the cases each paired comparison drops for a missing value (count and IDs on stderr, in comparison.md and in
comparison_exclusions.csv).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dentate_research.schema import REFERENCE_RATER

SUBCOMMANDS = ("metrics", "template", "baseline", "compare", "reliability")


def _add_selection(p: argparse.ArgumentParser, default_part: str) -> None:
    p.add_argument("--splits", type=Path, help="splits.json from make-splits (select cases with --fold/--part)")
    p.add_argument("--fold", default="0", help="fold index, 'all' or 'loso:<site>' (with --splits; default 0)")
    p.add_argument("--part", default=default_part, choices=("train", "val", "train+val", "test"),
                   help=f"part of the split to use (with --splits; default {default_part})")
    p.add_argument("--case-ids", nargs="+", help="restrict to these case IDs")
    p.add_argument("--sites", nargs="+", help="restrict to these sites")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in --out (default: refuse, exit 2)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    m = sub.add_parser("metrics", help="per-case metrics of a method's predictions against a reference rater")
    m.add_argument("--manifest", required=True, type=Path, help="case manifest (TSV/CSV)")
    m.add_argument("--pred-dir", required=True, type=Path, help="folder of <case_id>_seg.nii.gz predictions")
    m.add_argument("--method", required=True, help="method/architecture name for the tables")
    m.add_argument("--reference", default=REFERENCE_RATER,
                   help=f"reference rater (default {REFERENCE_RATER}; 'true' for phantoms)")
    m.add_argument("--out", required=True, type=Path, help="output folder")
    m.add_argument("--allow-missing", action="store_true", help="count missing predictions instead of failing")
    m.add_argument("--no-plots", action="store_true", help="skip PNG figures")
    _add_overwrite(m)
    _add_selection(m, "test")

    t = sub.add_parser("template", help="build the baselines' template from labelled TRAINING cases")
    t.add_argument("--manifest", required=True, type=Path)
    t.add_argument("--out", required=True, type=Path, help="template folder to write")
    t.add_argument("--rater", default=REFERENCE_RATER,
                   help=f"rater whose labels make the DN atlas (default {REFERENCE_RATER})")
    t.add_argument("--spacing", type=float, default=1.0, help="template voxel size in mm (default 1.0)")
    t.add_argument("--iterations", type=int, default=2, help="registration-to-mean iterations (default 2)")
    t.add_argument("--transform", default="affine", choices=("rigid", "affine"))
    t.add_argument("--registration-spacing", type=float, default=2.0,
                   help="images are resampled to this spacing (mm) for registration (default 2.0)")
    _add_overwrite(t)
    _add_selection(t, "train")

    b = sub.add_parser("baseline", help="run a classical baseline on cases, write its segmentations, evaluate")
    b.add_argument("--manifest", required=True, type=Path)
    b.add_argument("--baseline", required=True, choices=("classical", "atlas"))
    b.add_argument("--template", required=True, type=Path, help="template folder (see 'evaluate template')")
    b.add_argument("--reference", default=REFERENCE_RATER)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--param", nargs="*", default=[], metavar="KEY=VALUE",
                   help="baseline parameters, e.g. threshold_k=3 (classical: see ClassicalParams; atlas: "
                   "threshold, local_refinement)")
    b.add_argument("--method", help="method name in the tables (default: the baseline name)")
    b.add_argument("--registration-spacing", type=float, default=2.0,
                   help="images are resampled to this spacing (mm) for registration (default 2.0)")
    b.add_argument("--no-plots", action="store_true")
    _add_overwrite(b)
    _add_selection(b, "test")

    c = sub.add_parser("compare", help="paired comparison of methods from per-case tables")
    c.add_argument("tables", nargs="+", type=Path, help="per_case.csv files (or one table with several methods)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--metrics", nargs="+", default=["dice", "hd95_mm"],
                   help="metrics to compare (default dice hd95_mm)")
    c.add_argument("--methods", nargs="+", help="methods to compare and their order (default: order in the tables)")
    _add_overwrite(c)

    r = sub.add_parser("reliability", help="intra/interrater ICC of DN volume and Dice between raters")
    r.add_argument("--manifest", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--pairs", nargs="+", default=["intrarater:rater1:rater1_retrace", "interrater:rater1:rater2"],
                   metavar="STUDY:RATER_A:RATER_B", help="rater pairs (default intra rater1/rater1_retrace, "
                   "inter rater1/rater2)")
    _add_overwrite(r)
    _add_selection(r, "test")


RELIABILITY_FILES = ("reliability.csv", "reliability_per_case.csv", "reliability.md", "reliability.json")
TEMPLATE_FILES = ("template.json", "template_image.nii.gz", "dn_left_probability.nii.gz",
                  "dn_right_probability.nii.gz", "cerebellum_probability.nii.gz")


def _outputs_of(command: str) -> tuple[str, ...]:
    from dentate_research.evaluation.report import COMPARISON_FILES, REPORT_FILES

    return {"metrics": REPORT_FILES, "baseline": (*REPORT_FILES, "baseline_diagnostics.csv", "segmentations"),
            "compare": COMPARISON_FILES, "reliability": RELIABILITY_FILES, "template": TEMPLATE_FILES}[command]


def check_out_free(out: Path, command: str, overwrite: bool) -> None:
    """Refuse (before any work) an --out that is a file, or that holds an output of this sub-command, unless
    ``overwrite``."""
    from dentate_research.data.io import DataError

    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    if overwrite or not out.is_dir():
        return
    existing = [name for name in _outputs_of(command) if (out / name).exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{out / existing[0]}: exists{more} from an earlier 'evaluate {command}'; pass "
                              "--overwrite to replace it, or choose another --out")


def _select_cases(args: argparse.Namespace):  # -> list[Case]
    from dentate_research.data.io import DataError
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.splits import load_split

    cases = read_manifest(args.manifest)
    if getattr(args, "splits", None) is not None:
        split = load_split(args.splits, args.fold)
        wanted = {"train": split.train, "val": split.val, "test": split.test,
                  "train+val": [*split.train, *split.val]}[args.part]
        known = {c.case_id for c in cases}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise DataError(f"{args.splits}: fold {args.fold} part {args.part} lists case(s) not in manifest "
                            f"{args.manifest}: {unknown[:10]}")
        keep = set(wanted)
        cases = [c for c in cases if c.case_id in keep]
    if getattr(args, "case_ids", None):
        known = {c.case_id for c in cases}
        unknown = sorted(set(args.case_ids) - known)
        if unknown:
            raise DataError(f"--case-ids: {unknown[:10]} not among the selected cases of {args.manifest}")
        cases = [c for c in cases if c.case_id in set(args.case_ids)]
    if getattr(args, "sites", None):
        sites = {c.site for c in cases}
        unknown = sorted(set(args.sites) - sites)
        if unknown:
            raise DataError(f"--sites: {unknown} not found; available: {sorted(sites)}")
        cases = [c for c in cases if c.site in set(args.sites)]
    if not cases:
        raise DataError(f"no cases selected from {args.manifest}")
    return cases


def _parse_params(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--param expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        low = value.lower()
        if low in ("true", "false"):
            params[key] = low == "true"
        else:
            try:
                params[key] = float(value)
            except ValueError as exc:
                raise ValueError(f"--param {key}: expected a number or true/false, got '{value}'") from exc
    return params


def _run_metrics(args: argparse.Namespace) -> int:
    from dentate_research.evaluation.metrics import evaluate_cases
    from dentate_research.evaluation.report import write_report

    cases = _select_cases(args)
    if not args.pred_dir.is_dir():
        raise FileNotFoundError(f"--pred-dir {args.pred_dir}: folder not found")
    table = evaluate_cases(cases, args.pred_dir, method=args.method, reference=args.reference,
                           allow_missing=args.allow_missing, fold=args.fold if args.splits else None)
    paths = write_report(table, args.out, title=f"{args.method} vs {args.reference}", plots=not args.no_plots)
    n_missing = int(table.loc[table["flag"] == "missing_prediction", "case"].nunique())
    print(f"evaluated {table['case'].nunique() - n_missing} case(s), missing predictions: {n_missing}; "
          f"wrote {paths['per_case']} and {paths['summary_md']}")
    return 0


def _run_template(args: argparse.Namespace) -> int:
    from dentate_research.baselines.template import build_template

    cases = _select_cases(args)
    template = build_template(cases, rater=args.rater, spacing_mm=args.spacing, n_iterations=args.iterations,
                              transform=args.transform, registration_spacing_mm=args.registration_spacing)
    out = template.save(args.out)
    print(f"wrote template from {len(cases)} case(s) ({len(template.subjects)} subjects) to {out}")
    return 0


def _run_baseline(args: argparse.Namespace) -> int:
    from dentate_research.baselines import BASELINES, Template, check_no_overlap
    from dentate_research.baselines.apply import attach_diagnostics, baseline_params, segment_cases
    from dentate_research.data.atomic import write_csv_atomic
    from dentate_research.evaluation.metrics import evaluate_cases
    from dentate_research.evaluation.report import write_report

    cases = _select_cases(args)
    template = Template.load(args.template)
    check_no_overlap(template, cases)
    params = _parse_params(args.param)
    params.setdefault("registration_spacing_mm", args.registration_spacing)
    try:
        model = BASELINES[args.baseline](template, **params)
    except TypeError as exc:  # the atlas baseline takes threshold / local_refinement only
        raise ValueError(f"--param: {exc}") from exc
    method = args.method or args.baseline
    seg_dir = args.out / "segmentations"
    predictions, diag_table = segment_cases(model, cases, seg_dir, desc=f"baseline {args.baseline}")
    write_csv_atomic(diag_table, args.out / "baseline_diagnostics.csv")
    table = evaluate_cases(cases, predictions, method=method, reference=args.reference,
                           fold=args.fold if args.splits else None)
    table = attach_diagnostics(table, diag_table)
    paths = write_report(table, args.out, title=f"{method} baseline vs {args.reference}", plots=not args.no_plots,
                         extra={"baseline": args.baseline, "template": str(args.template),
                                "params": baseline_params(model)})
    print(f"segmented {len(cases)} case(s) into {seg_dir}; wrote {paths['per_case']} and {paths['summary_md']}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from dentate_research.data.io import DataError
    from dentate_research.evaluation.report import write_comparison

    tables = []
    for path in args.tables:
        if not path.exists():
            raise DataError(f"{path}: per-case table not found")
        t = pd.read_csv(path, keep_default_na=True)
        missing = {"case", "side", "method"} - set(t.columns)
        if missing:
            raise DataError(f"{path}: not a per-case table, missing column(s) {sorted(missing)}")
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    if "reference" not in table:
        table["reference"] = ""
    refs = table["reference"].dropna().unique()
    if len(refs) > 1:
        print(f"note: tables use several reference raters {list(refs)}; pairs are matched within a reference",
              file=sys.stderr)
    paths = write_comparison(table, args.out, metrics=args.metrics, methods=args.methods)
    excluded = pd.read_csv(paths["comparison_exclusions"], dtype={"dropped_cases": str}, keep_default_na=False)
    dropped = sorted({c for cell in excluded.get("dropped_cases", []) for c in str(cell).split(";") if c})
    if dropped:
        print(f"note: {len(dropped)} case(s) dropped from paired comparisons for a missing value: "
              f"{', '.join(dropped)} (per comparison: {paths['comparison_exclusions']})", file=sys.stderr)
    print(paths["comparison_md"].read_text())
    return 0


def _run_reliability(args: argparse.Namespace) -> int:
    from dentate_research.data.atomic import write_csv_atomic, write_text_atomic
    from dentate_research.evaluation.reliability import rater_reliability, reliability_markdown

    pairs = []
    for item in args.pairs:
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"--pairs expects STUDY:RATER_A:RATER_B, got '{item}'")
        pairs.append(tuple(parts))
    cases = _select_cases(args) if args.splits or args.case_ids or args.sites else None
    if cases is None:
        from dentate_research.data.manifest import read_manifest

        cases = read_manifest(args.manifest)
    summary, per_case = rater_reliability(cases, pairs)
    if summary.empty:
        from dentate_research.data.io import DataError

        raise DataError(f"{args.manifest}: no case has labels of both raters for any pair {args.pairs}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(summary, args.out / "reliability.csv")
    write_csv_atomic(per_case, args.out / "reliability_per_case.csv")
    text = "# Rater reliability (DN volume)\n\n" + reliability_markdown(summary)
    write_text_atomic(args.out / "reliability.md", text)
    primary = summary[(summary["form"] == "ICC2") & (summary["side"] == "mean_of_sides")]
    write_text_atomic(args.out / "reliability.json", json.dumps(
        {row["study"]: {"ICC(2,1)_mean_of_sides": row["icc"], "dice_mean": row["dice_mean"],
                        "n_cases": int(row["n_cases"])} for _, row in primary.iterrows()}, indent=2))
    print(text)
    return 0


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.io import DataError

    handlers = {"metrics": _run_metrics, "template": _run_template, "baseline": _run_baseline,
                "compare": _run_compare, "reliability": _run_reliability}
    try:
        check_out_free(args.out, args.command, args.overwrite)
        return handlers[args.command](args)
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
