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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dentate_research.data.io import NIFTI_SUFFIXES, DataError
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


def collect_inputs(paths: list[Path], bids_suffix: str = "Chimap", derivatives: str | None = None) -> list[Path]:
    """Expand folders to their .nii/.nii.gz files (sorted); a BIDS dataset folder (``sub-*`` folders or a
    dataset_description.json) to its ``*_<bids_suffix>`` maps (derivatives/, sourcedata/ and hidden folders
    skipped), or, with ``derivatives``, every folder to the maps of ``derivatives/<derivatives>/`` in it; check
    files exist and are NIfTI by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and (derivatives is not None or (path / "dataset_description.json").is_file()
                              or any(path.glob("sub-*/"))):
            from dentate_research.data.bids import find_maps

            files.extend(m.path for m in find_maps(path, suffix=bids_suffix, derivatives=derivatives))
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
            if not found:
                raise DataError(f"{path}: folder contains no .nii or .nii.gz file")
            files.extend(found)
        elif not path.exists():
            raise DataError(f"{path}: file not found")
        elif not path.name.endswith(NIFTI_SUFFIXES):
            raise DataError(f"{path}: unsupported file type; allowed: .nii, .nii.gz (or a folder of them)")
        else:
            files.append(path)
    return files


@dataclass
class ModelChoice:
    """Which two-step model ``segment`` uses and where it comes from (printed at start, stored in metadata)."""

    localizer: Path
    segmenter: Path
    model_dir: Path | None
    source: str
    card_name: str
    shadows: Path | None = None

    def info(self) -> dict[str, Any]:
        return {"model_dir": None if self.model_dir is None else str(self.model_dir.resolve()), "source": self.source,
                "card_name": self.card_name, "shadows": None if self.shadows is None else str(self.shadows)}

    def start_line(self) -> str:
        where = f"{self.model_dir}" if self.model_dir is not None else "run folders"
        line = f"model: {self.source} {where} (card '{self.card_name}')"
        if self.shadows is not None:
            line += f", shadowing the shipped model {self.shadows} (pass --model to choose)"
        return f"{line}; localizer {self.localizer}, segmenter {self.segmenter}"


def _card_name(model_dir: Path | None, localizer: Path, segmenter: Path) -> str:
    """The first heading of MODEL_CARD.md in the model folder, else a summary of the two model.json cards."""
    if model_dir is not None and (model_dir / "MODEL_CARD.md").is_file():
        for line in (model_dir / "MODEL_CARD.md").read_text(errors="replace").splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    parts = []
    for role, run_dir in (("localizer", localizer), ("segmenter", segmenter)):
        try:
            card = json.loads((run_dir / "model.json").read_text())
            spacing = card.get("target_spacing_mm") or ["?"]
            parts.append(f"{card.get('arch', '?')} {role} {spacing[0]} mm")
        except (OSError, ValueError, AttributeError):
            parts.append(f"{role} (unreadable model.json)")
    return " + ".join(parts)


def _select_model(args: argparse.Namespace) -> ModelChoice:
    from dentate_research.inference.default_model import (
        MODEL_ENV,
        default_model_dir,
        is_model_dir,
        packaged_model_dir,
        user_model_dir,
    )
    from dentate_research.inference.pipeline import resolve_model_dir

    if args.localizer or args.segmenter:
        if args.model:
            raise DataError("give either --model or --localizer/--segmenter, not both")
        if not (args.localizer and args.segmenter):
            raise DataError("--localizer and --segmenter must be given together")
        return ModelChoice(args.localizer, args.segmenter, None, "--localizer/--segmenter",
                           _card_name(None, args.localizer, args.segmenter))
    shadows = None
    if args.model:
        model_dir, source = Path(args.model), "--model"
    else:
        model_dir = default_model_dir()
        if os.environ.get(MODEL_ENV):
            source = f"${MODEL_ENV}"
        elif model_dir.resolve() == user_model_dir().resolve():
            source = "user cache"
            shipped = packaged_model_dir()
            shadows = shipped if is_model_dir(shipped) else None
        else:
            source = "shipped asset"
    localizer, segmenter = resolve_model_dir(model_dir)
    return ModelChoice(localizer, segmenter, model_dir, source, _card_name(model_dir, localizer, segmenter), shadows)


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


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


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
        model = _select_model(args)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise DataError("--device cuda requested but CUDA is not available in this torch build; use "
                                "--device cpu")
        print(model.start_line(), file=sys.stderr, flush=True)
        from dentate_research.inference.pipeline import DentatePredictor

        predictor = DentatePredictor(model.localizer, model.segmenter, device=args.device, margin_mm=args.margin_mm)
        predictor.model_info = model.info()
    except (DataError, FileExistsError) as exc:
        error(str(exc))
        _remove_if_created_empty(out, created)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted before any input was processed; nothing was written", file=sys.stderr)
        _remove_if_created_empty(out, created)
        return EXIT_SIGINT
    previous = _set_handlers(_raise_interrupted)
    try:
        return _run_batch(args, inputs, states, predictor)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _record_error(path: Path, reason: str, message: str, out: Path, predictor: Any) -> None:
    """Write the failed record of one input; a failure to do so is reported, never fatal to the batch."""
    from tqdm import tqdm

    from dentate_research.inference.outputs import write_error_outputs

    try:
        write_error_outputs(path, reason, message, out, predictor.metadata())
    except Exception as exc:  # the batch must go on
        tqdm.write(f"  error: could not record the failure of {path}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _segment_one(args: argparse.Namespace, path: Path, state: str, predictor: Any) -> int:
    """Segment and record one input (any error of this input becomes its record); its exit code."""
    from tqdm import tqdm

    from dentate_research.inference.outputs import segment_file
    from dentate_research.inference.pipeline import SegmentationError

    out: Path = args.output
    try:
        written = segment_file(predictor, path, out, overwrite=args.overwrite or state == "partial",
                               overlay=not args.no_overlay)
    except FileExistsError as exc:  # another process wrote this case meanwhile: never replace its work
        tqdm.write(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DataError as exc:
        tqdm.write(f"error: {exc}", file=sys.stderr)
        _record_error(path, "bad_input", str(exc), out, predictor)
        return EXIT_BAD_INPUT
    except SegmentationError as failure:
        tqdm.write(f"FAILED {path}: [{failure.reason}] {failure}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # one input's error must not end the batch
        reason = f"error:{type(exc).__name__}"
        tqdm.write(f"FAILED {path}: [{reason}] {exc}", file=sys.stderr)
        _record_error(path, reason, f"{type(exc).__name__}: {exc}", out, predictor)
        return EXIT_FAILED
    stats = written.metadata["statistics"]
    sides = ", ".join(f"{side} {_fmt(stats[f'{side}_volume_mm3'], '.1f')} mm3 "
                      f"{_fmt(stats[f'{side}_mean_susceptibility_ppm'], '.4f')} ppm"
                      for side in (SIDE_NAMES[value] for value in DN_SIDES))
    tqdm.write(f"{written.status.upper():7s} {path} -> {written.paths['seg']}  ({sides})", file=sys.stdout)
    for flag in written.flags:
        tqdm.write(f"  FLAG {flag}", file=sys.stderr)
    for warning in written.metadata["warnings"]:
        tqdm.write(f"  warning: {warning}", file=sys.stderr)
    return EXIT_FLAGGED if written.flags else EXIT_OK


def _refresh_report(out: Path) -> None:
    """Rebuild OUT/report.html after a case; a failure is reported, never fatal to the batch (the final rebuild
    reports it as an error)."""
    from tqdm import tqdm

    from dentate_research.inference.outputs import VOLUMES_CSV
    from dentate_research.inference.report import write_report

    if not (out / VOLUMES_CSV).is_file():  # nothing recorded yet (e.g. the failure record could not be written)
        return
    try:
        write_report(out)
    except Exception as exc:  # the report must not stop the segmentation of the batch
        tqdm.write(f"  warning: report.html not updated: {type(exc).__name__}: {exc}", file=sys.stderr)


def _run_batch(args: argparse.Namespace, inputs: list[Path], states: dict[str, str], predictor: Any) -> int:
    from tqdm import tqdm

    from dentate_research.inference.outputs import VOLUMES_CSV, case_name, load_case_record, rebuild_volumes_table
    from dentate_research.inference.report import write_report

    out: Path = args.output
    codes: list[int] = []
    n_skipped = 0
    current: Path | None = None
    try:
        for path in tqdm(inputs, desc="segment", unit="scan", disable=len(inputs) < 2, file=sys.stderr):
            current = path
            name = case_name(path)
            state = states.get(name, "absent")
            if args.resume and state == "complete":
                status = str((load_case_record(out, name) or {}).get("status"))
                tqdm.write(f"SKIP    {path}: already complete ({status})", file=sys.stderr)
                codes.append(_STATUS_CODE.get(status, EXIT_FAILED))
                n_skipped += 1
                continue
            codes.append(_segment_one(args, path, state, predictor))
            _refresh_report(out)  # after every finished case: an interrupted batch has the report of what is done
        current = None
        bids_out = getattr(args, "bids_out", None)
        try:
            rebuild_volumes_table(out)
            if bids_out is not None:
                from dentate_research.inference.bids_derivatives import export_bids_derivatives

                table = export_bids_derivatives(out, bids_out, participants=args.participants,
                                                model_name=str(getattr(predictor, "model_info", {}).get("card_name")
                                                               or ""))
                print(f"BIDS derivatives: {bids_out}/ (group table {table})", file=sys.stderr)
        except (DataError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            codes.append(EXIT_BAD_INPUT)
        try:
            if (out / VOLUMES_CSV).is_file():  # else nothing was recorded: no report
                report = write_report(out, also_to=[bids_out] if bids_out is not None and bids_out.is_dir() else [])
                print(f"report: {', '.join(str(p) for p in report.paths)} ({report.line()})", file=sys.stderr)
        except Exception as exc:  # the outputs are written; a report that cannot be is an error, not a crash
            print(f"error: report.html not written: {type(exc).__name__}: {exc}", file=sys.stderr)
            codes.append(EXIT_BAD_INPUT)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        _set_handlers(signal.SIG_IGN)  # a second Ctrl-C must not break the clean-up
        with contextlib.suppress(Exception):  # best effort; --resume rebuilds it too
            rebuild_volumes_table(out)
        with contextlib.suppress(Exception):  # best effort; 'report OUT' or --resume rebuilds it too
            write_report(out)
        done = len(codes) - n_skipped
        print(f"interrupted ({signal.Signals(signum).name}) while processing {current or 'the batch'}: "
              f"{done} input(s) finished, {len(inputs) - len(codes)} not; no partial output is left under a final "
              f"name; rerun with --resume to finish the batch", file=sys.stderr)
        return 128 + int(signum)
    code = _worst(codes)
    n_bad = sum(c != EXIT_OK for c in codes)
    skipped = f", {n_skipped} skipped as complete" if n_skipped else ""
    print(f"{len(inputs) - n_bad}/{len(inputs)} ok{skipped}; results in {args.output}/ (volumes.csv, report.html, "
          f"*/X_metadata.json); exit code {code}", file=sys.stderr)
    return code
