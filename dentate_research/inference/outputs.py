"""Files written per input, compatible with the released DentateSeg tool, plus a run report.

For an input ``X.nii.gz`` (or ``X.nii``) and output folder ``out/``::

    out/X/X_seg.nii.gz              DN labels, 1 = left, 2 = right (world RAS), input grid and orientation
    out/X/X_cerebellar_mask.nii.gz  localization mask (1 = cerebellum), input grid and orientation
    out/X/X_cropped.nii.gz          the image cropped to the box (input orientation, shifted affine)
    out/X/X_cropped_seg.nii.gz      DN labels on the cropped grid
    out/X/X_metadata.json           status, flags, warnings, crop box (voxels and mm), spacing, models
                                    (dirs + model.json), package versions, timings per step, DN statistics,
                                    ``qc``: plausibility metrics and thresholds (:mod:`.qc`)
    out/X/X_overlay.png             axial / coronal / sagittal views through the DN (quick look)
    out/volumes.csv                 one row per input: DN volume (mm^3) and mean susceptibility (ppm) per side,
                                    status, qc_status, flags (";"-separated), volume ratio, mean segmenter
                                    confidence per side (``left_confidence``, ``right_confidence``)

For a failed input (localizer found nothing, no DN) only ``X_metadata.json`` (``status: failed``), the
cerebellar mask if localization ran, and a ``failed`` row in ``volumes.csv`` are written: never an empty
``X_seg``. Nothing is overwritten unless ``overwrite=True`` (checked before any computation).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from dentate_research.data.geometry import BoundingBox, box_extent_mm
from dentate_research.data.io import NIFTI_SUFFIXES, DataError, Volume, save_like, save_nifti
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN

from .qc import QC_FAILED, qc_status

if TYPE_CHECKING:
    from .pipeline import DentatePredictor, SegmentationError, SegmentationResult

VOLUMES_CSV = "volumes.csv"
VOLUME_COLUMNS = ("case", "input", "status", "qc_status", "left_volume_mm3", "right_volume_mm3",
                  "left_mean_susceptibility_ppm", "right_mean_susceptibility_ppm", "left_voxels", "right_voxels",
                  "sides_swapped", "flags", "volume_ratio", "left_confidence", "right_confidence", "seg")
OUTPUT_SUFFIXES = {
    "seg": "_seg.nii.gz",
    "cerebellar_mask": "_cerebellar_mask.nii.gz",
    "cropped": "_cropped.nii.gz",
    "cropped_seg": "_cropped_seg.nii.gz",
    "metadata": "_metadata.json",
    "overlay": "_overlay.png",
}
VERSION_PACKAGES = ("dentate_research", "torch", "monai", "nnunetv2", "numpy", "scipy", "nibabel")


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


def _cases_in_table(table: Path) -> set[str]:
    if not table.is_file():
        return set()
    try:
        return set(pd.read_csv(table, dtype={"case": str})["case"].astype(str))
    except (KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{table}: exists but is not a volumes table written by 'segment' ({exc}); move it away "
                        "or choose another output folder") from exc


def check_outputs_free(out_dir: Path | str, inputs: list[Path], *, overwrite: bool) -> None:
    """Refuse (before any work) to overwrite existing outputs of these inputs unless ``overwrite``.

    Raises:
        DataError: two inputs map to the same output name.
        FileExistsError: naming the first existing file (or the volumes.csv row) and the option to use.
    """
    out_dir = Path(out_dir)
    names: dict[str, Path] = {}
    for path in inputs:
        name = case_name(path)
        if name in names:
            raise DataError(f"{path} and {names[name]} would both write to {out_dir / name}/; rename one of them")
        names[name] = Path(path)
    if overwrite:
        return
    table = out_dir / VOLUMES_CSV
    in_table = _cases_in_table(table)
    for name in names:
        existing = [p for p in case_output_paths(out_dir, name).values() if p.exists()]
        if existing:
            raise FileExistsError(f"{existing[0]}: output exists ({len(existing)} file(s) for '{name}'); pass "
                                  "--overwrite (Python: overwrite=True) to replace them")
        if name in in_table:
            raise FileExistsError(f"{table}: already has a row for '{name}'; pass --overwrite "
                                  "(Python: overwrite=True) to replace it")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the result (None if absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _model_info(run_dir: Path | None, card: Any) -> dict[str, Any]:
    from .protocol import card_to_dict

    info: dict[str, Any] = {"dir": None if run_dir is None else str(Path(run_dir).resolve())}
    model_json = None if run_dir is None else Path(run_dir) / "model.json"
    if model_json is not None and model_json.is_file():
        info["model_json"] = json.loads(model_json.read_text())
    else:
        info["model_json"] = card_to_dict(card)
    return info


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


def _base_metadata(name: str, volume: Volume, predictor: DentatePredictor, timings: dict[str, float]
                   ) -> dict[str, Any]:
    return {
        "case": name,
        "input": None if volume.path is None else str(Path(volume.path).resolve()),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": {str(LEFT_DN): "left dentate nucleus", str(RIGHT_DN): "right dentate nucleus",
                   "convention": "subject's left/right in world RAS coordinates"},
        "image": _image_report(volume),
        "models": {"localization": _model_info(predictor.localizer_dir, predictor.localizer.card),
                   "segmentation": _model_info(predictor.segmenter_dir, predictor.segmenter.card)},
        "device": predictor.device,
        "versions": package_versions(),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def update_volumes_table(out_dir: Path | str, row: dict[str, Any]) -> Path:
    """Add (or replace, same ``case``) one row of ``out_dir/volumes.csv``."""
    table = Path(out_dir) / VOLUMES_CSV
    new = pd.DataFrame([{col: row.get(col) for col in VOLUME_COLUMNS}])
    if table.is_file():
        old = pd.read_csv(table, dtype={"case": str})
        old = old[old["case"].astype(str) != str(row["case"])]
        new = pd.concat([old, new], ignore_index=True) if len(old) else new
    table.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(table, index=False)
    return table


def _save_crop_like_input(array: np.ndarray, cropped: Volume, volume: Volume, path: Path, is_label: bool) -> None:
    """Write a crop in the stored file's axis order (so it overlays the input in any viewer)."""
    img = nib.Nifti1Image(array, cropped.affine)
    if volume.original_affine is not None:
        transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(volume.affine),
                                                    nib.orientations.io_orientation(volume.original_affine))
        img = img.as_reoriented(transform)
    save_nifti(np.asarray(img.dataobj), img.affine, path, is_label=is_label)


def _remove_stale(out_dir: Path, name: str, keep: dict[str, Path]) -> None:
    """Delete this case's outputs from an earlier run that this run does not rewrite (only reached with
    overwrite; otherwise :func:`check_outputs_free` refused to start), so no stale X_seg sits beside a failure."""
    for key, path in case_output_paths(out_dir, name).items():
        if key not in keep and path.exists():
            path.unlink()


def _qc_columns(result: SegmentationResult) -> dict[str, Any]:
    """The volumes.csv columns taken from ``result.qc`` (empty cells where a value does not exist)."""
    qc = result.qc or {}
    confidence = qc.get("confidence") or {}
    status = qc.get("qc_status") or qc_status(result.flags, bool(qc.get("confidence_checked")))
    row: dict[str, Any] = {"qc_status": status, "volume_ratio": qc.get("volume_ratio")}
    for side in ("left", "right"):
        entry = confidence.get(side)
        row[f"{side}_confidence"] = None if entry is None else entry["mean"]
    return row


def write_case_outputs(result: SegmentationResult, predictor: DentatePredictor, out_dir: Path | str, *,
                       overwrite: bool = False, overlay: bool = True) -> CaseOutputs:
    """Write every output of one successful (possibly flagged) segmentation and its volumes row."""
    import time

    out_dir = Path(out_dir)
    volume = result.volume
    if volume.path is None:
        raise ValueError("write_case_outputs needs a result from a file (volume.path is None)")
    name = case_name(volume.path)
    paths = case_output_paths(out_dir, name)
    if not overlay:
        paths.pop("overlay")
    _remove_stale(out_dir, name, paths)
    t0 = time.perf_counter()
    save_like(result.labels, volume, paths["seg"], is_label=True, overwrite=overwrite)
    save_like(result.cerebellar_mask, volume, paths["cerebellar_mask"], is_label=True, overwrite=overwrite)
    _save_crop_like_input(result.cropped_image.array, result.cropped_image, volume, paths["cropped"], False)
    _save_crop_like_input(result.cropped_labels, result.cropped_image, volume, paths["cropped_seg"], True)
    if overlay:
        save_overlay_png(result.cropped_image, result.cropped_labels, paths["overlay"],
                         title=f"{name}: {result.status}" + (f" ({'; '.join(result.flags)})" if result.flags else ""))
    timings = {**result.timings_s, "write": time.perf_counter() - t0}
    metadata = _base_metadata(name, volume, predictor, timings)
    metadata.update({
        "status": result.status,
        "flags": result.flags,
        "warnings": result.warnings,
        "sides_swapped": result.sides_swapped,
        "crop": _crop_report(result.crop_box, volume, result.margin_mm, result.min_crop_mm),
        "postprocess": asdict(result.postprocess),
        "statistics": result.statistics,
        "qc": result.qc,
        "outputs": {key: p.name for key, p in paths.items()},
    })
    _write_json(metadata, paths["metadata"])
    update_volumes_table(out_dir, {
        "case": name, "input": metadata["input"], "status": result.status, **result.statistics,
        "sides_swapped": result.sides_swapped, "flags": ";".join(result.flags), **_qc_columns(result),
        "seg": str(paths["seg"].relative_to(out_dir)),
    })
    return CaseOutputs(name, Path(volume.path), result.status, paths, metadata, result, list(result.flags))


def write_failure_outputs(failure: SegmentationError, predictor: DentatePredictor, out_dir: Path | str, *,
                          overwrite: bool = False) -> CaseOutputs:
    """Record a failed input: ``X_metadata.json`` with ``status: failed``, the mask if any, a volumes row."""
    out_dir = Path(out_dir)
    volume = failure.volume
    if volume.path is None:
        raise ValueError("write_failure_outputs needs a failure on a file input (volume.path is None)")
    name = case_name(volume.path)
    paths = case_output_paths(out_dir, name)
    written = {"metadata": paths["metadata"]}
    has_mask = failure.cerebellar_mask is not None and bool(failure.cerebellar_mask.any())
    _remove_stale(out_dir, name, {**written, **({"cerebellar_mask": paths["cerebellar_mask"]} if has_mask else {})})
    if has_mask:
        save_like(failure.cerebellar_mask, volume, paths["cerebellar_mask"], is_label=True, overwrite=overwrite)
        written["cerebellar_mask"] = paths["cerebellar_mask"]
    metadata = _base_metadata(name, volume, predictor, failure.timings_s)
    metadata.update({"status": "failed", "failure_reason": failure.reason, "error": str(failure),
                     "flags": [failure.reason], "warnings": [],
                     "crop": None if failure.crop_box is None else _crop_report(
                         failure.crop_box, volume, predictor.margin_mm, predictor.min_crop_mm),
                     "outputs": {key: p.name for key, p in written.items()}})
    _write_json(metadata, paths["metadata"])
    update_volumes_table(out_dir, {"case": name, "input": metadata["input"], "status": "failed",
                                   "qc_status": QC_FAILED, "flags": failure.reason, "seg": ""})
    return CaseOutputs(name, Path(volume.path), "failed", written, metadata, None, [failure.reason])


def save_overlay_png(image: Volume, labels: np.ndarray, path: Path | str, title: str = "") -> Path:
    """Axial, coronal and two sagittal slices (through each DN) of a canonical-RAS crop with the DN overlaid.

    Views are in neurological convention (subject's left on the left of axial/coronal panels); left DN red,
    right DN blue. Slices pass through the DN centroid (the crop centre if a side is empty).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    path = Path(path)
    array = image.array
    sx, sy, sz = image.spacing
    centre_all = np.argwhere(labels > 0).mean(axis=0) if np.any(labels > 0) else np.asarray(labels.shape) / 2
    cx, cy, cz = (int(round(c)) for c in centre_all)

    def side_x(value: int) -> int:
        idx = np.argwhere(labels == value)
        return int(round(idx[:, 0].mean())) if idx.size else cx

    finite = array[np.isfinite(array)]
    vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    cmap = ListedColormap([(0, 0, 0, 0), (0.9, 0.1, 0.1, 0.55), (0.1, 0.4, 1.0, 0.55)])
    panels = [
        (f"axial z={cz}", array[:, :, cz].T, labels[:, :, cz].T, sy / sx, ("L", "R")),
        (f"coronal y={cy}", array[:, cy, :].T, labels[:, cy, :].T, sz / sx, ("L", "R")),
        (f"sagittal left DN x={side_x(LEFT_DN)}", array[side_x(LEFT_DN)].T, labels[side_x(LEFT_DN)].T,
         sz / sy, ("P", "A")),
        (f"sagittal right DN x={side_x(RIGHT_DN)}", array[side_x(RIGHT_DN)].T, labels[side_x(RIGHT_DN)].T,
         sz / sy, ("P", "A")),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 4))
    for ax, (label, img, lab, aspect, (lo, hi)) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
        ax.imshow(lab, cmap=cmap, vmin=0, vmax=2, origin="lower", aspect=aspect, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.02, 0.5, lo, transform=ax.transAxes, color="yellow", fontsize=11, va="center")
        ax.text(0.98, 0.5, hi, transform=ax.transAxes, color="yellow", fontsize=11, va="center", ha="right")
    fig.suptitle(title or "DN overlay (red = left, blue = right)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
