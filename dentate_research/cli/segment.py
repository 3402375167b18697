"""``python -m dentate_research segment``: two-step DN segmentation of QSM NIfTI files.

Examples::

    python -m dentate_research segment -i scan.nii.gz -o out/                 # default model
    python -m dentate_research segment -i scans/ -o out/ --model my_model/    # every .nii/.nii.gz in scans/
    python -m dentate_research segment -i a.nii.gz -i b.nii -o out/ --localizer runs/loc --segmenter runs/seg
    python -m dentate_research segment -i bids/ -o out/ --derivatives qsmxt  # bids/derivatives/qsmxt/*_Chimap.nii

Exit codes (the worst input decides; see the epilog): 0 ok, 2 bad input/usage/existing outputs/unusable output
location, 3 at least one input failed (no X_seg written), 4 segmentations written but at least one is flagged for
review (pipeline flags or the plausibility QC of :mod:`dentate_research.inference.qc`), 130 interrupted by Ctrl-C
(SIGINT), 143 terminated (SIGTERM).

Robustness (see :mod:`dentate_research.inference.outputs`): every file is written atomically; options and the
output location are checked before any work; an error in one input becomes that input's ``failed`` record and
the batch goes on; Ctrl-C/SIGTERM remove the outputs of the case being written, bring ``volumes.csv`` up to date
and exit without a traceback; ``--resume`` skips complete cases and redoes partial ones; several processes may
write into one output folder (``volumes.csv`` is updated under a file lock). After every case ``report.html``, the
batch QC report (:mod:`dentate_research.inference.report`), is rebuilt from what is on disk. The model used
(folder, source and card name) is printed at start and recorded in every ``X_metadata.json`` (``models``).

This module parses options, prints and maps outcomes to exit codes; the work is the Python API of
:mod:`dentate_research.inference.batch` (``collect_inputs``, ``select_model``, ``segment_batch``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dentate_research.data.io import DataError
from dentate_research.data.labels import DN_SIDES, SIDE_NAMES

EXIT_OK, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_FLAGGED = 0, 2, 3, 4
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143
_SEVERITY = {EXIT_OK: 0, EXIT_FLAGGED: 1, EXIT_FAILED: 2, EXIT_BAD_INPUT: 3}
_STATUS_CODE = {"ok": EXIT_OK, "flagged": EXIT_FLAGGED, "failed": EXIT_FAILED}

EPILOG = """\
outputs per input X.nii.gz (DentateSeg layout):
  OUT/X/X_seg.nii.gz              1 = left DN, 2 = right DN (world RAS), on the input grid and orientation
  OUT/X/X_cerebellar_mask.nii.gz  localization mask
  OUT/X/X_cropped.nii.gz, X_cropped_seg.nii.gz   the crop and its labels
  OUT/X/X_metadata.json           status, flags, warnings, crop box (voxels, mm), models, versions, timings,
                                  "qc": the plausibility measurements behind the QC flags and their thresholds
  OUT/X/X_overlay.png             axial/coronal/sagittal views through the DN
  OUT/X/X_mosaic.png              small mosaic for the report: axial/coronal/sagittal through each DN
                                  (canonical RAS, L/R marked; red = 1 = left DN, blue = 2 = right DN)
  OUT/volumes.csv                 one row per input: volume (mm^3) and mean susceptibility (ppm) per side,
                                  status, qc_status, flags, volume ratio, segmenter confidence per side,
                                  NaN/Inf voxels inside the DN per side
  OUT/report.html                 the batch QC report, one self-contained file (no network, no JavaScript):
                                  counts, run time, model card; failed and flagged scans first with their flags
                                  explained; group plots (volume per side with outliers, left vs right, mean
                                  susceptibility); every scan's mosaic. Rewritten after each case (and into
                                  --bids-out at the end); 'python -m dentate_research report OUT' rebuilds it

failure policy (never a silent empty mask):
  exit 0  every input segmented, no flags
  exit 2  bad input or usage: missing file, not NIfTI, not 3D, no model, outputs exist without --overwrite
          or --resume, output path is a file, output folder not writable, volumes.csv read-only or not a
          volumes table, an option out of range (all checked before any work), CUDA requested but unavailable
  exit 3  an input FAILED: the localizer found no cerebellum, or no DN was found in the crop; no X_seg is
          written, X_metadata.json has "status": "failed" and "failure_reason", volumes.csv a 'failed' row
  exit 4  segmentations written but FLAGGED for review ("status": "flagged", "flags" in X_metadata.json and
          volumes.csv): left_dn_empty / right_dn_empty, cerebellum_touches_fov:<faces>,
          dn_touches_crop_border:<faces>, dn_same_hemisphere, dn_sides_from_one_component:<how> (no two separate
          nuclei found: one blob was cut into left and right), nonfinite_voxels_in_dn:<n> (NaN/Inf voxels inside
          the DN: excluded from the mean susceptibility, counted in <side>_nonfinite_voxels), and the plausibility QC
          (dentate_research.inference.qc, default thresholds; <side> = left/right):
            <side>_dn_volume_implausible:<V>mm3        DN volume outside 250-2500 mm^3
            dn_volume_ratio_implausible:<R>            larger/smaller DN volume above 2.0
            <side>_dn_lateral_offset_implausible:<D>mm DN centroid not 5-30 mm from the cerebellar midline
            <side>_dn_outside_cerebellum_box:<axes>    DN centroid outside the cerebellar mask's bounding box
            <side>_dn_position_implausible:y=..,z=..   DN centroid not in the anterior, mid-height part of that
                                                       box (normalized y 0.30-0.95, z 0.25-0.90)
            dn_pair_asymmetric:dy=..mm,dz=..mm,lateral=..mm  the two nuclei do not mirror each other: centroids
                                                       > 14 mm apart in y or z, or distances from the
                                                       midline differing by > 14 mm
            <side>_dn_low_confidence:mean=..,uncertain=..  segmenter DN-vs-background probability inside the
                                                       DN: mean below 0.80 or over 40 % of voxels below 0.70
                                                       (only models that expose probabilities)
          qc_status in volumes.csv: pass, pass_without_confidence (the model gives no probabilities), flagged,
          failed.
  A left/right swap corrected in world RAS coordinates is reported as "sides_swapped": true (a warning).
  In batch mode every input is attempted; an unexpected error in one input is recorded as that input's
  failure ("status": "failed", "failure_reason": "error:<type>") and the batch goes on; the exit code is the
  worst one (2 > 3 > 4 > 0).
  exit 130 / 143  interrupted by Ctrl-C (SIGINT) / terminated (SIGTERM): the outputs of the case being written
          are removed, volumes.csv is brought up to date, one line is printed; --resume finishes the batch.

guarantees:
  atomic outputs  every file is written under a temporary name in its folder and renamed (no partial file
                  under a final name, even after SIGKILL); X_metadata.json is written last and lists the case's
                  files and its volumes.csv row
  concurrency     several segment processes may write into one output folder: volumes.csv is rewritten under a
                  file lock (OUT/.volumes.csv.lock), atomically, and rebuilt from the per-case records; report.html
                  is rebuilt from the files on disk under its own lock (OUT/.report.html.lock)
  --resume        a case is complete when its X_metadata.json says ok/flagged/failed and every file it lists
                  exists: complete cases are skipped (and kept in volumes.csv), partial ones (e.g. X_seg without
                  metadata, leftover .tmp-* files) are deleted and redone

default model: without --model/--localizer/--segmenter the default two-step model is used
(dentate_research.inference.default_model: $DENTATE_RESEARCH_MODEL, else the user cache, else the model shipped
with the package); if none is installed the error says how to create one ('python -m dentate_research demo'
trains it in minutes on CPU). The start line names the model folder, its source and card name, and says when a
model in the user cache shadows the shipped one.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("-i", "--input", action="extend", nargs="+", required=True, type=Path, metavar="PATH",
                        help="QSM image(s) (.nii/.nii.gz, ppm) or folder(s) of them; repeatable")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT_DIR",
                        help="output folder; results go to OUT_DIR/<name>/ and OUT_DIR/volumes.csv")
    parser.add_argument("--model", type=Path, metavar="MODEL_DIR",
                        help="two-step model folder holding localization/ and segmentation/ run directories "
                             "(default: the installed default model)")
    parser.add_argument("--localizer", type=Path, metavar="RUN_DIR", help="localization run directory")
    parser.add_argument("--segmenter", type=Path, metavar="RUN_DIR", help="segmentation run directory")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="torch device (default: cpu)")
    parser.add_argument("--margin-mm", type=float, default=None, metavar="MM",
                        help="crop margin around the localized cerebellum in mm (default: from the model card, "
                             "else 10)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs of these inputs")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted batch: skip complete cases, delete and redo partial ones")
    parser.add_argument("--no-overlay", action="store_true",
                        help="do not write the X_overlay.png quick look (X_mosaic.png, shown in report.html, is "
                             "always written)")
    parser.add_argument("--bids-out", type=Path, default=None, metavar="DIR",
                        help="also write the results as a BIDS derivatives dataset (dseg + sidecar JSON with QC per "
                             "scan, dataset_description.json, DIR/dentate_volumes.tsv joined with participants.tsv); "
                             "it holds every finished case of OUT_DIR")
    parser.add_argument("--participants", type=Path, default=None, metavar="TSV",
                        help="participants.tsv to join into the --bids-out group table (default: found in the "
                             "BIDS dataset of the inputs)")
    parser.add_argument("--suffix", default="Chimap",
                        help="BIDS suffix of the QSM maps when an input folder is a BIDS dataset (default Chimap)")
    parser.add_argument("--derivatives", default=None, metavar="NAME",
                        help="input folders are BIDS dataset roots: read their maps from derivatives/NAME/ (a "
                             "pipeline's outputs, e.g. qsmxt); without it derivatives/, sourcedata/ and hidden "
                             "folders of a BIDS dataset are skipped")


def _option_errors(args: argparse.Namespace) -> str | None:
    """One line for the first numeric/combined option out of range, else None (checked before any work)."""
    margin = args.margin_mm
    if margin is not None and (not math.isfinite(margin) or margin < 0):
        return f"--margin-mm {margin:g}: out of range; allowed: a finite number of mm >= 0"
    if args.resume and args.overwrite:
        return "--resume and --overwrite exclude each other: --resume keeps complete cases, --overwrite redoes all"
    return None


def _worst(codes: list[int]) -> int:
    return max(codes, key=_SEVERITY.__getitem__) if codes else EXIT_OK


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGINT/SIGTERM handler of ``segment`` (a KeyboardInterrupt, so every cleanup path runs)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# the signal whose Interrupted the handler raised: Python swallows an exception raised while a finalizer or weakref
# callback runs ("Exception ignored in ..."), so the batch also checks this after every finished input
_pending_signal: list[int] = []


def _raise_interrupted(signum: int, _frame: Any) -> None:
    _set_handlers(signal.SIG_IGN)  # a second Ctrl-C / SIGTERM must not break the clean-up the first one starts
    _pending_signal.append(signum)
    raise Interrupted(signum)


def _quiet_swallowed_interrupt(previous: Callable[[Any], Any]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that drops the handler's own Interrupted when Python swallowed it inside a finalizer
    (its "Exception ignored ... Traceback" would read as a crash; ``_pending_signal`` raises it again after the
    next finished input) and passes everything else to ``previous``."""

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            previous(unraisable)

    return hook


def _on_case(outcome: Any) -> None:
    """After each finished input: its line, then the interruption again if the handler's exception was swallowed."""
    _print_outcome(outcome)
    if _pending_signal:
        raise Interrupted(_pending_signal[0])


def _set_handlers(handler: Any) -> dict[int, Any]:
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: keep the defaults
            previous[sig] = signal.signal(sig, handler)
    return previous


def _remove_if_created_empty(out: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()


def run(args: argparse.Namespace) -> int:
    from dentate_research.inference.batch import collect_inputs, select_model
    from dentate_research.inference.outputs import check_output_location, check_outputs_free

    def error(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)

    problem = _option_errors(args)
    if problem:
        error(problem)
        return EXIT_BAD_INPUT
    out: Path = args.output
    created = not out.exists()
    try:
        inputs = collect_inputs(list(args.input), getattr(args, "suffix", "Chimap"), getattr(args, "derivatives", None))
        check_output_location(out)
        bids_out = getattr(args, "bids_out", None)
        if bids_out is not None and bids_out.exists() and not bids_out.is_dir():
            raise DataError(f"--bids-out {bids_out}: exists and is not a folder")
        if getattr(args, "participants", None) is not None and not args.participants.is_file():
            raise DataError(f"--participants {args.participants}: file not found")
        states = check_outputs_free(out, inputs, overwrite=args.overwrite, resume=args.resume)
        model = select_model(args.model, args.localizer, args.segmenter)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise DataError("--device cuda requested but CUDA is not available in this torch build; use "
                                "--device cpu")
        print(model.start_line(), file=sys.stderr, flush=True)
        predictor = model.predictor(device=args.device, margin_mm=args.margin_mm)
    except (DataError, FileExistsError) as exc:
        error(str(exc))
        _remove_if_created_empty(out, created)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted before any input was processed; nothing was written", file=sys.stderr)
        _remove_if_created_empty(out, created)
        return EXIT_SIGINT
    _pending_signal.clear()
    previous = _set_handlers(_raise_interrupted)
    previous_unraisable_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_swallowed_interrupt(previous_unraisable_hook)
    try:
        return _run_batch(args, inputs, states, predictor)
    finally:
        sys.unraisablehook = previous_unraisable_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_outcome(outcome: Any) -> None:
    """One line per finished input (stdout for results, stderr for problems), above the progress bar."""
    from tqdm import tqdm

    if outcome.status == "skipped":
        tqdm.write(f"SKIP    {outcome.path}: already complete ({outcome.recorded_status})", file=sys.stderr)
    elif outcome.status == "bad_input":
        tqdm.write(f"error: {outcome.message}", file=sys.stderr)
    elif outcome.status == "failed":
        tqdm.write(f"FAILED {outcome.path}: [{outcome.reason}] {outcome.message}", file=sys.stderr)
    else:
        stats = outcome.statistics
        sides = ", ".join(f"{side} {_fmt(stats[f'{side}_volume_mm3'], '.1f')} mm3 "
                          f"{_fmt(stats[f'{side}_mean_susceptibility_ppm'], '.4f')} ppm"
                          for side in (SIDE_NAMES[value] for value in DN_SIDES))
        tqdm.write(f"{outcome.status.upper():7s} {outcome.path} -> {outcome.seg_path}  ({sides})", file=sys.stdout)
        for flag in outcome.flags:
            tqdm.write(f"  FLAG {flag}", file=sys.stderr)
        for warning in outcome.warnings:
            tqdm.write(f"  warning: {warning}", file=sys.stderr)


def _exit_code(outcome: Any) -> int:
    if outcome.status == "skipped":
        return _STATUS_CODE.get(outcome.recorded_status, EXIT_FAILED)
    return {"ok": EXIT_OK, "flagged": EXIT_FLAGGED, "failed": EXIT_FAILED, "bad_input": EXIT_BAD_INPUT}[outcome.status]


def _run_batch(args: argparse.Namespace, inputs: list[Path], states: dict[str, str], predictor: Any) -> int:
    """:func:`dentate_research.inference.batch.segment_batch` with the CLI's lines, interruption message and exit
    code."""
    from dentate_research.inference.batch import segment_batch

    bids_out = getattr(args, "bids_out", None)
    try:
        result = segment_batch(predictor, inputs, args.output, resume=args.resume, overwrite=args.overwrite,
                               overlay=not args.no_overlay, states=states, bids_out=bids_out,
                               participants=getattr(args, "participants", None), on_case=_on_case)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        outcomes = getattr(exc, "outcomes", [])
        done = sum(o.status != "skipped" for o in outcomes)
        current = inputs[len(outcomes)] if len(outcomes) < len(inputs) else "the batch"
        print(f"interrupted ({signal.Signals(signum).name}) while processing {current}: "
              f"{done} input(s) finished, {len(inputs) - len(outcomes)} not; no partial output is left under a final "
              f"name; rerun with --resume to finish the batch", file=sys.stderr)
        return 128 + int(signum)
    if _pending_signal:  # swallowed after the last input (while the tables or the report were written)
        print(f"interrupted ({signal.Signals(_pending_signal[0]).name}) after the last input; every input finished; "
              "rerun with --resume to rebuild the tables and the report", file=sys.stderr)
        return 128 + int(_pending_signal[0])
    if result.bids_table is not None:
        print(f"BIDS derivatives: {bids_out}/ (group table {result.bids_table})", file=sys.stderr)
    if result.report_paths:
        print(f"report: {', '.join(str(p) for p in result.report_paths)} ({result.report_line})", file=sys.stderr)
    for message in result.errors:
        print(f"error: {message}", file=sys.stderr)
    codes = [_exit_code(o) for o in result.outcomes] + [EXIT_BAD_INPUT] * len(result.errors)
    code = _worst(codes)
    n_bad = sum(_exit_code(o) != EXIT_OK for o in result.outcomes)
    n_skipped = result.counts()["skipped"]
    skipped = f", {n_skipped} skipped as complete" if n_skipped else ""
    print(f"{len(inputs) - n_bad}/{len(inputs)} ok{skipped}; results in {args.output}/ (volumes.csv, report.html, "
          f"*/X_metadata.json); exit code {code}", file=sys.stderr)
    return code
