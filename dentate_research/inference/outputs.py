"""The inference writer: files written per input, compatible with the released DentateSeg tool, plus a run report.

The predictor (:mod:`.pipeline`) works in memory; this module writes what it returns. It imports the pipeline, never
the reverse, and takes plain objects: a :class:`~.pipeline.SegmentationResult` (or
:class:`~.pipeline.SegmentationError`) and a :class:`~.pipeline.PredictorMetadata` (``predictor.metadata()``).
:func:`segment_file` does both for one NIfTI file (``segment``, ``demo`` and tests use it).

For an input ``X.nii.gz`` (or ``X.nii``) and output folder ``out/``::

    out/X/X_seg.nii.gz              DN labels, 1 = left, 2 = right (world RAS), input grid and orientation
    out/X/X_cerebellar_mask.nii.gz  localization mask (1 = cerebellum), input grid and orientation
    out/X/X_cropped.nii.gz          the image cropped to the box (input orientation, shifted affine)
    out/X/X_cropped_seg.nii.gz      DN labels on the cropped grid
    out/X/X_metadata.json           status, flags, warnings, crop box (voxels and mm), spacing, models
                                    (dirs + model.json), package versions, timings per step, DN statistics,
                                    ``qc``: plausibility metrics and thresholds (:mod:`.qc`)
    out/X/X_overlay.png             axial / coronal / sagittal views through the DN (quick look)
    out/X/X_mosaic.png              small mosaic: axial / coronal / sagittal through each DN (for report.html)
    out/volumes.csv                 one row per input: DN volume (mm^3) and mean susceptibility (ppm) per side,
                                    status, qc_status, flags (";"-separated), volume ratio, mean segmenter
                                    confidence per side (``left_confidence``, ``right_confidence``), NaN/Inf
                                    voxels inside the DN per side (``left_nonfinite_voxels``, ...; excluded
                                    from the mean susceptibility)
    out/report.html                 the batch QC report (:mod:`.report`; written by ``segment`` after each case)

For a failed input (localizer found nothing, no DN, unreadable input, any other error of that input) only
``X_metadata.json`` (``status: failed``, ``failure_reason``), the cerebellar mask if localization ran, and a
``failed`` row in ``volumes.csv`` are written: never an empty ``X_seg``. Nothing is overwritten unless
``overwrite=True`` (checked before any computation).

Guarantees (interruption, concurrency, resume):

* every file is written atomically (:mod:`dentate_research.data.atomic`: temporary name in the same folder, then
  ``os.replace``), so no partial file ever sits under a final name;
* ``X_metadata.json`` is written last and is the case's commit record: it lists the case's files
  (``outputs``) and its ``volumes.csv`` row (``volumes_row``). An error or interruption while a case is written
  removes what that case wrote so far; a case folder without a finished metadata JSON (SIGKILL) is *partial*
  (:func:`case_state`) and is cleaned and redone by ``segment --resume``;
* ``volumes.csv`` is only rewritten under a file lock (``out/.volumes.csv.lock``), atomically, so
  concurrent ``segment`` processes writing into one folder lose no row; :func:`rebuild_volumes_table` adds the
  rows of every complete case from its metadata record (after an interruption, or for cases skipped by
  ``--resume``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from dentate_research.data.atomic import (
    TEMP_PREFIX,
    file_lock,
    is_temp_file,
    remove_temp_files,
    write_bytes_atomic,
    write_csv_atomic,
    write_figure_atomic,
    write_json_atomic,
)
from dentate_research.data.geometry import BoundingBox, box_extent_mm
from dentate_research.data.io import NIFTI_SUFFIXES, DataError, Volume, save_like, save_nifti
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, SIDE_NAMES
from dentate_research.model_contract import card_to_dict
from dentate_research.provenance import package_versions

from .pipeline import DentatePredictor, PredictorMetadata, SegmentationError, SegmentationResult
from .qc import QC_FAILED, qc_status

VOLUMES_CSV = "volumes.csv"
VOLUMES_LOCK = ".volumes.csv.lock"
VOLUME_COLUMNS = ("case", "input", "status", "qc_status", "left_volume_mm3", "right_volume_mm3",
                  "left_mean_susceptibility_ppm", "right_mean_susceptibility_ppm", "left_voxels", "right_voxels",
                  "left_nonfinite_voxels", "right_nonfinite_voxels", "sides_swapped", "flags", "volume_ratio",
                  "left_confidence", "right_confidence", "seg")
REQUIRED_VOLUME_COLUMNS = ("case", "status")
FINISHED_STATUSES = ("ok", "flagged", "failed")
OUTPUT_SUFFIXES = {
    "seg": "_seg.nii.gz",
    "cerebellar_mask": "_cerebellar_mask.nii.gz",
    "cropped": "_cropped.nii.gz",
    "cropped_seg": "_cropped_seg.nii.gz",
    "metadata": "_metadata.json",
    "overlay": "_overlay.png",
    "mosaic": "_mosaic.png",
}
# Quick looks that may be made after the case was committed (report.html makes a missing mosaic for an output folder
# written before mosaics existed): an unlisted one does not make a complete case partial.
REGENERABLE_OUTPUTS = ("mosaic",)


def case_name(path: Path | str) -> str:
    """``X`` for ``X.nii.gz`` / ``X.nii``; DataError for other names."""
    name = Path(path).name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    raise DataError(f"{path}: unsupported file type; allowed: .nii, .nii.gz")


def case_output_paths(out_dir: Path | str, name: str) -> dict[str, Path]:
    """Output file paths for case ``name`` (keys as in ``OUTPUT_SUFFIXES``)."""
    folder = Path(out_dir) / name
    return {key: folder / f"{name}{suffix}" for key, suffix in OUTPUT_SUFFIXES.items()}


@dataclass
class CaseOutputs:
    """What was written for one input."""

    name: str
    input: Path
    status: str
    paths: dict[str, Path]
    metadata: dict[str, Any]
    result: SegmentationResult | None = None
    flags: list[str] = field(default_factory=list)


def read_volumes_table(table: Path | str) -> pd.DataFrame | None:
    """The rows of an existing ``volumes.csv`` (None if absent); DataError (one line) if it is not a volumes table
    written by ``segment`` (unreadable, missing ``case``/``status`` or unexpected columns)."""
    table = Path(table)
    if not table.exists():
        return None
    if not table.is_file():
        raise DataError(f"{table}: exists but is not a file; move it away or choose another output folder")
    try:
        frame = pd.read_csv(table, dtype={"case": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(VOLUME_COLUMNS))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{table}: exists but is not a volumes table written by 'segment' ({type(exc).__name__}); "
                        "move it away or choose another output folder") from exc
    unexpected = [c for c in frame.columns if c not in VOLUME_COLUMNS]
    missing = [c for c in REQUIRED_VOLUME_COLUMNS if c not in frame.columns]
    if unexpected or missing:
        what = "; ".join(part for part in (f"unexpected columns {unexpected[:5]}" if unexpected else "",
                                           f"missing columns {missing}" if missing else "") if part)
        raise DataError(f"{table}: exists but is not a volumes table written by 'segment' ({what}); move it away "
                        "or choose another output folder")
    frame["case"] = frame["case"].astype(str)
    return frame


def check_output_location(out_dir: Path | str) -> None:
    """Check (before any work) that ``out_dir`` can receive outputs: creates it if absent, probes that files can
    be created in it, and checks an existing ``volumes.csv`` (a regular, writable volumes table). Raises DataError
    with one line naming the path and what is wrong."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder; give a folder with -o/--output")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{out}: output folder is not writable ({exc.strerror or exc})") from exc
    table = out / VOLUMES_CSV
    if table.exists():
        if not table.is_file():
            raise DataError(f"{table}: exists but is not a file; move it away or choose another output folder")
        if not os.access(table, os.W_OK) or not table.stat().st_mode & 0o222:
            raise DataError(f"{table}: volumes table is read-only; make it writable (chmod u+w) or choose another "
                            "output folder")
        read_volumes_table(table)


def load_case_record(out_dir: Path | str, name: str) -> dict[str, Any] | None:
    """The parsed ``X_metadata.json`` of case ``name`` (None if absent or unreadable)."""
    path = case_output_paths(out_dir, name)["metadata"]
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def case_state(out_dir: Path | str, name: str) -> str:
    """``absent`` (no output of this case), ``complete`` (its metadata JSON says finished - ok, flagged or
    failed - and every file it lists exists; nothing else of the case's outputs and no temporary file) or
    ``partial`` (anything else: interrupted or killed while writing)."""
    out = Path(out_dir)
    folder = out / name
    paths = case_output_paths(out, name)
    existing = {key for key, p in paths.items() if p.exists()}
    temps = folder.is_dir() and any(is_temp_file(p) for p in folder.iterdir())
    if not existing and not temps:
        return "absent"
    record = load_case_record(out, name)
    if record is None or record.get("status") not in FINISHED_STATUSES or temps:
        return "partial"
    listed = record.get("outputs")
    if not isinstance(listed, dict) or "metadata" not in listed:
        return "partial"
    if any(not (folder / str(fname)).is_file() for fname in listed.values()):
        return "partial"
    if existing - set(listed) - set(REGENERABLE_OUTPUTS):  # e.g. an X_seg beside a failure record
        return "partial"
    return "complete"


def clear_case_outputs(out_dir: Path | str, name: str) -> None:
    """Delete every output of case ``name`` (its metadata record first, so the case is never left looking
    complete) and leftover temporary files in its folder; the folder itself goes if it is empty."""
    paths = case_output_paths(out_dir, name)
    for key in ("metadata", *[k for k in paths if k != "metadata"]):
        with contextlib.suppress(FileNotFoundError):
            paths[key].unlink()
    folder = Path(out_dir) / name
    remove_temp_files(folder)
    with contextlib.suppress(OSError):
        folder.rmdir()


def check_outputs_free(out_dir: Path | str, inputs: list[Path], *, overwrite: bool,
                       resume: bool = False) -> dict[str, str]:
    """Refuse (before any work) to overwrite existing outputs of these inputs unless ``overwrite`` or ``resume``.

    Returns ``{case name: state}`` (:func:`case_state`; ``redo`` for every case with ``overwrite``). With
    ``resume`` nothing is refused: complete cases are to be skipped, partial ones cleaned and redone.

    Raises:
        DataError: two inputs map to the same output name, a case folder path is a file, or an existing
            volumes.csv is not a volumes table.
        FileExistsError: naming the first existing file (or the volumes.csv row) and the options to use.
    """
    out_dir = Path(out_dir)
    names: dict[str, Path] = {}
    for path in inputs:
        name = case_name(path)
        if name in names:
            raise DataError(f"{path} and {names[name]} would both write to {out_dir / name}/; rename one of them")
        names[name] = Path(path)
        folder = out_dir / name
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{folder}: exists and is not a folder; the outputs of {path} go there, move it away")
    if overwrite:
        return dict.fromkeys(names, "redo")
    table = out_dir / VOLUMES_CSV
    existing_table = read_volumes_table(table)
    in_table = set() if existing_table is None else set(existing_table["case"])
    states: dict[str, str] = {}
    for name in names:
        state = case_state(out_dir, name)
        states[name] = state
        if resume:
            continue
        if state != "absent":
            existing = [p for p in case_output_paths(out_dir, name).values() if p.exists()] or [out_dir / name]
            raise FileExistsError(f"{existing[0]}: output exists ({state} outputs of '{name}'); pass --overwrite "
                                  "(Python: overwrite=True) to replace them, or --resume to skip finished cases "
                                  "and redo partial ones")
        if name in in_table:
            raise FileExistsError(f"{table}: already has a row for '{name}'; pass --overwrite "
                                  "(Python: overwrite=True) to replace it, or --resume")
    return states


def _model_info(run_dir: Path | None, card: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"dir": None if run_dir is None else str(Path(run_dir).resolve())}
    model_json = None if run_dir is None else Path(run_dir) / "model.json"
    if model_json is not None and model_json.is_file():
        info["model_json"] = json.loads(model_json.read_text())
    else:
        info["model_json"] = card_to_dict(card)
    return info


def models_section(metadata: PredictorMetadata | None) -> dict[str, Any] | None:
    """The ``models`` section of a metadata record: each stage's run folder and card, plus what
    ``metadata.model_info`` says (``model_dir``, ``source``: shipped asset / user cache / --model / ..., ``card_name``,
    ``shadows``), set by ``segment``."""
    if metadata is None:
        return None
    section: dict[str, Any] = {"localization": _model_info(metadata.localizer_dir, metadata.localizer_card),
                               "segmentation": _model_info(metadata.segmenter_dir, metadata.segmenter_card)}
    section.update(metadata.model_info or {})
    return section


def _file_box(box: BoundingBox, volume: Volume) -> dict[str, list[int]]:
    """The canonical-RAS crop box expressed in the stored file's voxel indices (half-open)."""
    if volume.original_affine is None:
        return box.to_dict()
    to_file = np.linalg.inv(volume.original_affine) @ volume.affine
    corners = np.array([box.start, np.asarray(box.stop) - 1], dtype=float)
    mapped = np.rint(corners @ to_file[:3, :3].T + to_file[:3, 3]).astype(int)
    return {"start": mapped.min(axis=0).tolist(), "stop": (mapped.max(axis=0) + 1).tolist()}


def _crop_report(box: BoundingBox, volume: Volume, margin_mm: float,
                 min_crop_mm: tuple[float, float, float] | None) -> dict[str, Any]:
    corners = np.array([np.asarray(box.start) - 0.5, np.asarray(box.stop) - 0.5])
    world = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return {
        "box_voxels_ras": box.to_dict(),
        "box_voxels_file": _file_box(box, volume),
        "size_voxels": list(box.size),
        "size_mm": [round(s, 3) for s in box_extent_mm(box, volume.affine)],
        "world_bounds_mm": {"min": world.min(axis=0).round(3).tolist(), "max": world.max(axis=0).round(3).tolist()},
        "margin_mm": margin_mm,
        "min_crop_mm": None if min_crop_mm is None else list(min_crop_mm),
        "note": "box_voxels_ras indexes the image reoriented to canonical RAS; box_voxels_file the stored array; "
                "half-open [start, stop)",
    }


def _image_report(volume: Volume) -> dict[str, Any]:
    stored_affine = volume.original_affine if volume.original_affine is not None else volume.affine
    return {
        "shape_file": list(volume.original_shape or volume.shape),
        "affine_file": np.asarray(stored_affine).round(6).tolist(),
        "orientation_file": "".join(nib.aff2axcodes(stored_affine)),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "shape_ras": list(volume.shape),
    }


def _base_metadata(name: str, volume: Volume, metadata: PredictorMetadata, timings: dict[str, float]
                   ) -> dict[str, Any]:
    return {
        "case": name,
        "input": None if volume.path is None else str(Path(volume.path).resolve()),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": {str(LEFT_DN): "left dentate nucleus", str(RIGHT_DN): "right dentate nucleus",
                   "convention": "subject's left/right in world RAS coordinates"},
        "image": _image_report(volume),
        "models": models_section(metadata),
        "device": metadata.device,
        "versions": package_versions(),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }


def _write_json(data: dict[str, Any], path: Path) -> None:
    write_json_atomic(path, data)


def _locked_table_update(out_dir: Path, change: Any) -> Path:
    """Under the volumes lock: read volumes.csv, apply ``change(frame | None) -> frame | None``, write it back
    atomically (nothing is written when ``change`` returns None)."""
    table = out_dir / VOLUMES_CSV
    with file_lock(out_dir / VOLUMES_LOCK):
        for leftover in out_dir.glob(f"{TEMP_PREFIX}*-{VOLUMES_CSV}"):  # every writer holds the lock: stale
            with contextlib.suppress(OSError):
                leftover.unlink()
        new = change(read_volumes_table(table))
        if new is not None:
            write_csv_atomic(new.reindex(columns=list(VOLUME_COLUMNS)), table)
    return table


def _row_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{col: row.get(col) for col in VOLUME_COLUMNS} for row in rows], columns=list(VOLUME_COLUMNS))


def _merge_rows(old: pd.DataFrame | None, rows: list[dict[str, Any]], drop: set[str] = frozenset()) -> pd.DataFrame:
    new = _row_frame(rows)
    replaced = {str(r["case"]) for r in rows} | set(drop)
    if old is None or not len(old):
        return new
    old = old[~old["case"].astype(str).isin(replaced)]
    return pd.concat([old, new], ignore_index=True) if len(old) else new


def update_volumes_table(out_dir: Path | str, row: dict[str, Any]) -> Path:
    """Add (or replace, same ``case``) one row of ``out_dir/volumes.csv``: locked read-modify-write, atomic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _locked_table_update(out_dir, lambda old: _merge_rows(old, [row]))


def rebuild_volumes_table(out_dir: Path | str) -> Path | None:
    """Make ``volumes.csv`` hold the row of every complete case in ``out_dir`` (from each case's metadata record,
    ``volumes_row``) and no row of a partial case; rows of other cases are kept. Locked and atomic. Returns the
    table path (None if there is neither a table nor a record)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None

    def change(old: pd.DataFrame | None) -> pd.DataFrame | None:  # runs under the lock: no row can be lost
        records: list[dict[str, Any]] = []
        partial: set[str] = set()
        for folder in sorted(p for p in out_dir.iterdir() if p.is_dir() and not is_temp_file(p)):
            state = case_state(out_dir, folder.name)
            if state == "partial":
                partial.add(folder.name)
            elif state == "complete":
                row = (load_case_record(out_dir, folder.name) or {}).get("volumes_row")
                if isinstance(row, dict) and row.get("case") is not None:
                    records.append(row)
        if old is None and not records:
            return None
        merged = _merge_rows(old, records, drop=partial)
        return None if old is not None and _same_rows(old, merged) else merged

    table = _locked_table_update(out_dir, change)
    return table if table.exists() else None


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    def norm(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.reindex(columns=list(VOLUME_COLUMNS)).astype(object)
        return frame.where(frame.notna(), "").astype(str).sort_values("case").reset_index(drop=True)

    return norm(a).equals(norm(b))


@contextlib.contextmanager
def _case_transaction(out_dir: Path, name: str, overwrite: bool) -> Any:
    """Clear the case's old outputs (refusing without ``overwrite``), then yield a list to which the writer
    appends each file it writes; on any error or interruption those files are removed again (the metadata record
    is written last, so a case is either complete or absent)."""
    existing = [p for p in case_output_paths(out_dir, name).values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: exists; pass overwrite=True (CLI: --overwrite) to replace it")
    clear_case_outputs(out_dir, name)
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in reversed(written):
            with contextlib.suppress(OSError):
                path.unlink()
        remove_temp_files(out_dir / name)
        with contextlib.suppress(OSError):
            (out_dir / name).rmdir()
        raise


def _save_crop_like_input(array: np.ndarray, cropped: Volume, volume: Volume, path: Path, is_label: bool) -> None:
    """Write a crop in the stored file's axis order (so it overlays the input in any viewer)."""
    img = nib.Nifti1Image(array, cropped.affine)
    if volume.original_affine is not None:
        transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(volume.affine),
                                                    nib.orientations.io_orientation(volume.original_affine))
        img = img.as_reoriented(transform)
    save_nifti(np.asarray(img.dataobj), img.affine, path, is_label=is_label)


def _qc_columns(result: SegmentationResult) -> dict[str, Any]:
    """The volumes.csv columns taken from ``result.qc`` (empty cells where a value does not exist)."""
    qc = result.qc or {}
    confidence = qc.get("confidence") or {}
    status = qc.get("qc_status") or qc_status(result.flags, bool(qc.get("confidence_checked")))
    row: dict[str, Any] = {"qc_status": status, "volume_ratio": qc.get("volume_ratio")}
    for side in (SIDE_NAMES[LEFT_DN], SIDE_NAMES[RIGHT_DN]):
        entry = confidence.get(side)
        row[f"{side}_confidence"] = None if entry is None else entry["mean"]
    return row


def write_case_outputs(result: SegmentationResult, metadata: PredictorMetadata, out_dir: Path | str, *,
                       overwrite: bool = False, overlay: bool = True) -> CaseOutputs:
    """Write every output of one successful (possibly flagged) segmentation and its volumes row (metadata record
    last; on any error or interruption the files of this case written so far are removed). ``metadata``:
    ``predictor.metadata()``."""
    out_dir = Path(out_dir)
    volume = result.volume
    if volume.path is None:
        raise ValueError("write_case_outputs needs a result from a file (volume.path is None)")
    name = case_name(volume.path)
    paths = case_output_paths(out_dir, name)
    if not overlay:
        paths.pop("overlay")
    t0 = time.perf_counter()
    with _case_transaction(out_dir, name, overwrite) as written:
        written.append(save_like(result.labels, volume, paths["seg"], is_label=True))
        written.append(save_like(result.cerebellar_mask, volume, paths["cerebellar_mask"], is_label=True))
        _save_crop_like_input(result.cropped_image.array, result.cropped_image, volume, paths["cropped"], False)
        written.append(paths["cropped"])
        _save_crop_like_input(result.cropped_labels, result.cropped_image, volume, paths["cropped_seg"], True)
        written.append(paths["cropped_seg"])
        if overlay:
            written.append(save_overlay_png(
                result.cropped_image, result.cropped_labels, paths["overlay"],
                title=f"{name}: {result.status}" + (f" ({'; '.join(result.flags)})" if result.flags else "")))
        written.append(save_mosaic_png(result.cropped_image, result.cropped_labels, paths["mosaic"],
                                       title=f"{name}: {result.status}"))
        timings = {**result.timings_s, "write": time.perf_counter() - t0}
        record = _base_metadata(name, volume, metadata, timings)
        row = {"case": name, "input": record["input"], "status": result.status, **result.statistics,
               "sides_swapped": result.sides_swapped, "flags": ";".join(result.flags), **_qc_columns(result),
               "seg": str(paths["seg"].relative_to(out_dir))}
        record.update({
            "status": result.status,
            "flags": result.flags,
            "warnings": result.warnings,
            "sides_swapped": result.sides_swapped,
            "crop": _crop_report(result.crop_box, volume, result.margin_mm, result.min_crop_mm),
            "postprocess": asdict(result.postprocess),
            "statistics": result.statistics,
            "qc": result.qc,
            "outputs": {key: p.name for key, p in paths.items()},
            "volumes_row": _jsonable_row(row),
        })
        _write_json(record, paths["metadata"])  # the commit record: written last
    update_volumes_table(out_dir, row)
    return CaseOutputs(name, Path(volume.path), result.status, paths, record, result, list(result.flags))


def _jsonable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {col: (v.item() if isinstance(v, np.generic) else v) for col in VOLUME_COLUMNS
            if (v := row.get(col)) is not None or col in row}


def write_failure_outputs(failure: SegmentationError, metadata: PredictorMetadata, out_dir: Path | str, *,
                          overwrite: bool = False) -> CaseOutputs:
    """Record a failed input: ``X_metadata.json`` with ``status: failed``, the mask if any, a volumes row.
    ``metadata``: ``predictor.metadata()``."""
    out_dir = Path(out_dir)
    volume = failure.volume
    if volume.path is None:
        raise ValueError("write_failure_outputs needs a failure on a file input (volume.path is None)")
    name = case_name(volume.path)
    paths = case_output_paths(out_dir, name)
    listed = {"metadata": paths["metadata"]}
    has_mask = failure.cerebellar_mask is not None and bool(failure.cerebellar_mask.any())
    with _case_transaction(out_dir, name, overwrite) as written:
        if has_mask:
            written.append(save_like(failure.cerebellar_mask, volume, paths["cerebellar_mask"], is_label=True))
            listed["cerebellar_mask"] = paths["cerebellar_mask"]
        record = _base_metadata(name, volume, metadata, failure.timings_s)
        row = {"case": name, "input": record["input"], "status": "failed", "qc_status": QC_FAILED,
               "flags": failure.reason, "seg": ""}
        record.update({"status": "failed", "failure_reason": failure.reason, "error": str(failure),
                       "flags": [failure.reason], "warnings": [],
                       "crop": None if failure.crop_box is None else _crop_report(
                           failure.crop_box, volume, metadata.margin_mm, metadata.min_crop_mm),
                       "outputs": {key: p.name for key, p in listed.items()}, "volumes_row": row})
        _write_json(record, paths["metadata"])
    update_volumes_table(out_dir, row)
    return CaseOutputs(name, Path(volume.path), "failed", listed, record, None, [failure.reason])


def write_error_outputs(path: Path | str, reason: str, message: str, out_dir: Path | str,
                        metadata: PredictorMetadata | None = None, *, overwrite: bool = True) -> CaseOutputs:
    """Record an input that failed for any other reason (unreadable file, an unexpected error in one case):
    ``X_metadata.json`` with ``status: failed``, ``failure_reason`` and ``error``, and a ``failed`` row.
    ``metadata``: ``predictor.metadata()`` if a predictor exists."""
    out_dir = Path(out_dir)
    name = case_name(path)
    paths = case_output_paths(out_dir, name)
    listed = {"metadata": paths["metadata"]}
    row = {"case": name, "input": str(Path(path).resolve()), "status": "failed", "qc_status": QC_FAILED,
           "flags": reason, "seg": ""}
    record = {"case": name, "input": row["input"],
              "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "status": "failed", "failure_reason": reason, "error": message, "flags": [reason], "warnings": [],
              "models": models_section(metadata), "versions": package_versions(),
              "outputs": {key: p.name for key, p in listed.items()}, "volumes_row": row}
    with _case_transaction(out_dir, name, overwrite):
        _write_json(record, paths["metadata"])
    update_volumes_table(out_dir, row)
    return CaseOutputs(name, Path(path), "failed", listed, record, None, [reason])


def segment_file(predictor: DentatePredictor, path: Path | str, out_dir: Path | str, *, overwrite: bool = False,
                 overlay: bool = True) -> CaseOutputs:
    """Segment one NIfTI file and write the DentateSeg-compatible outputs under ``out_dir/<name>/``.

    Returns the written :class:`CaseOutputs`. Raises ``FileExistsError`` (before any computation) if outputs exist
    and ``overwrite`` is False, ``DataError`` for bad input and :class:`~.pipeline.SegmentationError` after writing
    ``X_metadata.json`` (status ``failed``) and the volumes row. Files are written atomically, the metadata record
    last; an error or interruption while writing removes this case's files again.
    """
    path = Path(path)
    out_dir = Path(out_dir)
    check_outputs_free(out_dir, [path], overwrite=overwrite)
    metadata = predictor.metadata()
    try:
        result = predictor.predict_path(path)
    except SegmentationError as failure:
        write_failure_outputs(failure, metadata, out_dir, overwrite=overwrite)
        raise
    return write_case_outputs(result, metadata, out_dir, overwrite=overwrite, overlay=overlay)


# ---------------------------------------------------------------------------------------------- quick-look images
DN_COLOURS = {LEFT_DN: (0.9, 0.1, 0.1), RIGHT_DN: (0.1, 0.4, 1.0)}  # red = left DN (1), blue = right DN (2)
_DN_ALPHA = 0.55


@dataclass(frozen=True)
class SlicePanel:
    """One 2D view of a canonical-RAS grid, ready for ``imshow(..., origin="lower")``.

    Attributes:
        title: panel title.
        image, labels: 2D slices (rows = the vertical axis, columns = the horizontal one).
        aspect: pixel height / width (mm / mm), so anatomy keeps its proportions.
        edges: orientation letters at the left and right edge (``L``/``R`` or ``P``/``A``).
    """

    title: str
    image: np.ndarray
    labels: np.ndarray
    aspect: float
    edges: tuple[str, str]


def _check_ras(image: Volume) -> None:
    codes = "".join(nib.aff2axcodes(image.affine))
    if codes != "RAS":
        raise ValueError(f"quick-look images need a canonical RAS grid (data.io.load_image), got {codes}")


def ras_slice_panel(image: Volume, labels: np.ndarray, view: str, index: int, title: str) -> SlicePanel:
    """``axial`` (z = index; x across, y up), ``coronal`` (y = index; x across, z up) or ``sagittal`` (x = index;
    y across, z up) slice of a canonical-RAS image and its labels, in neurological convention (subject's left on
    the left of axial and coronal views, anterior on the right of sagittal ones)."""
    sx, sy, sz = image.spacing
    array = image.array
    i = int(np.clip(index, 0, array.shape[{"axial": 2, "coronal": 1, "sagittal": 0}[view]] - 1))
    if view == "axial":
        return SlicePanel(title, array[:, :, i].T, labels[:, :, i].T, sy / sx, ("L", "R"))
    if view == "coronal":
        return SlicePanel(title, array[:, i, :].T, labels[:, i, :].T, sz / sx, ("L", "R"))
    return SlicePanel(title, array[i].T, labels[i].T, sz / sy, ("P", "A"))


def dn_centre_voxel(labels: np.ndarray, value: int | None = None) -> tuple[int, int, int] | None:
    """Voxel centroid (rounded) of label ``value`` (any DN label if None); None when it is empty."""
    idx = np.argwhere(labels > 0 if value is None else labels == value)
    if not idx.size:
        return None
    return tuple(int(round(c)) for c in idx.mean(axis=0))  # type: ignore[return-value]


def _intensity_window(array: np.ndarray) -> tuple[float, float]:
    finite = array[np.isfinite(array)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99])
    return float(low), float(high if high > low else low + 1e-6)


def _draw_panel(ax: Any, panel: SlicePanel, window: tuple[float, float], fontsize: float = 9) -> None:
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([(0, 0, 0, 0), (*DN_COLOURS[LEFT_DN], _DN_ALPHA), (*DN_COLOURS[RIGHT_DN], _DN_ALPHA)])
    ax.imshow(panel.image, cmap="gray", origin="lower", vmin=window[0], vmax=window[1], aspect=panel.aspect,
              interpolation="nearest")
    ax.imshow(panel.labels, cmap=cmap, vmin=0, vmax=2, origin="lower", aspect=panel.aspect, interpolation="nearest")
    ax.set_title(panel.title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])
    lo, hi = panel.edges
    ax.text(0.02, 0.5, lo, transform=ax.transAxes, color="yellow", fontsize=fontsize + 2, va="center")
    ax.text(0.98, 0.5, hi, transform=ax.transAxes, color="yellow", fontsize=fontsize + 2, va="center", ha="right")


def save_overlay_png(image: Volume, labels: np.ndarray, path: Path | str, title: str = "") -> Path:
    """Axial, coronal and two sagittal slices (through each DN) of a canonical-RAS crop with the DN overlaid.

    Views are in neurological convention (subject's left on the left of axial/coronal panels); left DN red,
    right DN blue. Slices pass through the DN centroid (the crop centre if a side is empty).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    _check_ras(image)
    path = Path(path)
    cx, cy, cz = dn_centre_voxel(labels) or tuple(int(n // 2) for n in labels.shape)

    def side_x(value: int) -> int:
        centre = dn_centre_voxel(labels, value)
        return cx if centre is None else centre[0]

    panels = [
        ras_slice_panel(image, labels, "axial", cz, f"axial z={cz}"),
        ras_slice_panel(image, labels, "coronal", cy, f"coronal y={cy}"),
        ras_slice_panel(image, labels, "sagittal", side_x(LEFT_DN), f"sagittal left DN x={side_x(LEFT_DN)}"),
        ras_slice_panel(image, labels, "sagittal", side_x(RIGHT_DN), f"sagittal right DN x={side_x(RIGHT_DN)}"),
    ]
    window = _intensity_window(image.array)
    fig, axes = plt.subplots(1, 4, figsize=(14, 4))
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel, window)
    fig.suptitle(title or "DN overlay (red = left, blue = right)", fontsize=10)
    fig.tight_layout()
    try:
        write_figure_atomic(fig, path, dpi=80, format="png")
    finally:
        plt.close(fig)
    return path


def figure_png_bytes(fig: Any, **savefig_kwargs: Any) -> bytes:
    """A matplotlib figure rendered to PNG bytes in memory (no file is written)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    return buffer.getvalue()


def mosaic_png(image: Volume, labels: np.ndarray, title: str = "") -> bytes:
    """A small quick-look mosaic (PNG bytes, ~430 x 330 px) of a canonical-RAS image and its DN labels.

    One row per nucleus (left DN = label 1, red; right DN = label 2, blue; legend below), each with the axial,
    coronal and sagittal slice through that nucleus' centroid (the other nucleus' centroid, else the grid centre,
    when it is empty). Axial and coronal views show the subject's left on the left (``L`` / ``R`` marks), sagittal
    views anterior on the right (``P`` / ``A``). Built on a bare ``Figure`` (Agg, no pyplot state): ~0.1-0.2 s.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    _check_ras(image)
    fallback = dn_centre_voxel(labels) or tuple(int(n // 2) for n in labels.shape)
    window = _intensity_window(image.array)
    fig = Figure(figsize=(5.4, 4.1), dpi=80)
    axes = fig.subplots(2, 3)
    for row, value in zip(axes, (LEFT_DN, RIGHT_DN), strict=True):
        centre = dn_centre_voxel(labels, value)
        x, y, z = centre or fallback
        side = SIDE_NAMES[value] + (" DN" if centre is not None else " DN (none)")
        views = (("axial", z, f"{side} axial z={z}"), ("coronal", y, f"{side} coronal y={y}"),
                 ("sagittal", x, f"{side} sagittal x={x}"))
        for ax, (view, index, label) in zip(row, views, strict=True):
            _draw_panel(ax, ras_slice_panel(image, labels, view, index, label), window, fontsize=6.5)
    fig.legend(handles=[Patch(color=DN_COLOURS[v], label=f"{v} = {SIDE_NAMES[v]} DN") for v in (LEFT_DN, RIGHT_DN)],
               loc="lower center", ncol=2, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9 if title else 0.95, bottom=0.08, wspace=0.04, hspace=0.22)
    return figure_png_bytes(fig)


def save_mosaic_png(image: Volume, labels: np.ndarray, path: Path | str, title: str = "") -> Path:
    """Write :func:`mosaic_png` to ``path`` atomically (``X_mosaic.png``, shown per scan in ``report.html``)."""
    return write_bytes_atomic(path, mosaic_png(image, labels, title))
