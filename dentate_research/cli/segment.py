"""``python -m dentate_research segment``: two-step DN segmentation of QSM NIfTI files.

Examples::

    python -m dentate_research segment -i scan.nii.gz -o out/                 # default model
    python -m dentate_research segment -i scans/ -o out/ --model my_model/    # every .nii/.nii.gz in scans/
    python -m dentate_research segment -i a.nii.gz -i b.nii -o out/ --localizer runs/loc --segmenter runs/seg

Exit codes (the worst input decides; see the epilog): 0 ok, 2 bad input/usage/existing outputs, 3 at least one
input failed (no X_seg written), 4 segmentations written but at least one is flagged for review (pipeline flags
or the plausibility QC of :mod:`dentate_research.inference.qc`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dentate_research.data.io import NIFTI_SUFFIXES, DataError

EXIT_OK, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_FLAGGED = 0, 2, 3, 4
_SEVERITY = {EXIT_OK: 0, EXIT_FLAGGED: 1, EXIT_FAILED: 2, EXIT_BAD_INPUT: 3}

EPILOG = """\
outputs per input X.nii.gz (DentateSeg layout):
  OUT/X/X_seg.nii.gz              1 = left DN, 2 = right DN (world RAS), on the input grid and orientation
  OUT/X/X_cerebellar_mask.nii.gz  localization mask
  OUT/X/X_cropped.nii.gz, X_cropped_seg.nii.gz   the crop and its labels
  OUT/X/X_metadata.json           status, flags, warnings, crop box (voxels, mm), models, versions, timings,
                                  "qc": the plausibility measurements behind the QC flags and their thresholds
  OUT/X/X_overlay.png             axial/coronal/sagittal views through the DN
  OUT/volumes.csv                 one row per input: volume (mm^3) and mean susceptibility (ppm) per side,
                                  status, qc_status, flags, volume ratio, segmenter confidence per side

failure policy (never a silent empty mask):
  exit 0  every input segmented, no flags
  exit 2  bad input or usage: missing file, not NIfTI, not 3D, no model, outputs exist without --overwrite
          (checked before any work), CUDA requested but unavailable
  exit 3  an input FAILED: the localizer found no cerebellum, or no DN was found in the crop; no X_seg is
          written, X_metadata.json has "status": "failed" and "failure_reason", volumes.csv a 'failed' row
  exit 4  segmentations written but FLAGGED for review ("status": "flagged", "flags" in X_metadata.json and
          volumes.csv): left_dn_empty / right_dn_empty, cerebellum_touches_fov:<faces>,
          dn_touches_crop_border:<faces>, dn_same_hemisphere, and the plausibility QC
          (dentate_research.inference.qc, default thresholds; <side> = left/right):
            <side>_dn_volume_implausible:<V>mm3        DN volume outside 250-2500 mm^3
            dn_volume_ratio_implausible:<R>            larger/smaller DN volume above 2.0
            <side>_dn_lateral_offset_implausible:<D>mm DN centroid not 5-30 mm from the cerebellar midline
            <side>_dn_outside_cerebellum_box:<axes>    DN centroid outside the cerebellar mask's bounding box
            <side>_dn_position_implausible:y=..,z=..   DN centroid not in the anterior, mid-height part of that
                                                       box (normalized y 0.30-0.95, z 0.25-0.90)
            <side>_dn_low_confidence:mean=..,uncertain=..  segmenter DN-vs-background probability inside the
                                                       DN: mean below 0.80 or over 40 % of voxels below 0.70
                                                       (only models that expose probabilities)
          qc_status in volumes.csv: pass, pass_without_confidence (the model gives no probabilities), flagged,
          failed.
  A left/right swap corrected in world RAS coordinates is reported as "sides_swapped": true (a warning).
  In batch mode every input is attempted; the exit code is the worst one (2 > 3 > 4 > 0).

default model: without --model/--localizer/--segmenter the default two-step model is used
(dentate_research.inference.default_model); if none is installed the error says how to create one
('python -m dentate_research demo' trains it in minutes on CPU).
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
    parser.add_argument("--no-overlay", action="store_true", help="do not write the X_overlay.png quick look")


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Expand folders to their .nii/.nii.gz files (sorted); check files exist and are NIfTI by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
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


def _model_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    from dentate_research.inference.default_model import default_model_dir
    from dentate_research.inference.pipeline import resolve_model_dir

    if args.localizer or args.segmenter:
        if args.model:
            raise DataError("give either --model or --localizer/--segmenter, not both")
        if not (args.localizer and args.segmenter):
            raise DataError("--localizer and --segmenter must be given together")
        return args.localizer, args.segmenter
    return resolve_model_dir(args.model if args.model else default_model_dir())


def _worst(codes: list[int]) -> int:
    return max(codes, key=_SEVERITY.__getitem__) if codes else EXIT_OK


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    from dentate_research.inference.outputs import check_outputs_free

    def error(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)

    try:
        inputs = collect_inputs(list(args.input))
        check_outputs_free(args.output, inputs, overwrite=args.overwrite)
        localizer_dir, segmenter_dir = _model_dirs(args)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise DataError("--device cuda requested but CUDA is not available in this torch build; use "
                                "--device cpu")
        from dentate_research.inference.pipeline import DentatePredictor

        predictor = DentatePredictor(localizer_dir, segmenter_dir, device=args.device, margin_mm=args.margin_mm)
    except (DataError, FileExistsError) as exc:
        error(str(exc))
        return EXIT_BAD_INPUT

    from tqdm import tqdm

    from dentate_research.inference.pipeline import SegmentationError

    codes: list[int] = []
    for path in tqdm(inputs, desc="segment", unit="scan", disable=len(inputs) < 2, file=sys.stderr):
        try:
            written = predictor.predict_file(path, args.output, overwrite=args.overwrite,
                                             overlay=not args.no_overlay)
        except DataError as exc:
            tqdm.write(f"error: {exc}", file=sys.stderr)
            codes.append(EXIT_BAD_INPUT)
            continue
        except SegmentationError as failure:
            tqdm.write(f"FAILED {path}: [{failure.reason}] {failure}", file=sys.stderr)
            codes.append(EXIT_FAILED)
            continue
        stats = written.metadata["statistics"]
        sides = ", ".join(f"{side} {_fmt(stats[f'{side}_volume_mm3'], '.1f')} mm3 "
                          f"{_fmt(stats[f'{side}_mean_susceptibility_ppm'], '.4f')} ppm" for side in ("left", "right"))
        tqdm.write(f"{written.status.upper():7s} {path} -> {written.paths['seg']}  ({sides})", file=sys.stdout)
        for flag in written.flags:
            tqdm.write(f"  FLAG {flag}", file=sys.stderr)
        for warning in written.metadata["warnings"]:
            tqdm.write(f"  warning: {warning}", file=sys.stderr)
        codes.append(EXIT_FLAGGED if written.flags else EXIT_OK)
    code = _worst(codes)
    n_bad = sum(c != EXIT_OK for c in codes)
    print(f"{len(inputs) - n_bad}/{len(inputs)} ok; results in {args.output}/ (volumes.csv, */X_metadata.json); "
          f"exit code {code}", file=sys.stderr)
    return code
