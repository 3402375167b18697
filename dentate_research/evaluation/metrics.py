"""Per-case, per-side segmentation metrics in physical units.

For each side (label 1 = left DN, 2 = right DN, world RAS) and each (prediction, reference) pair:

=====================  ==========================================================================================
dice                   2|P∩R| / (|P|+|R|)
hd95_mm                95th-percentile symmetric Hausdorff distance between the surfaces (mm): the larger of
                       the two directed 95th percentiles (MONAI ``compute_hausdorff_distance(percentile=95)``)
assd_mm                average symmetric surface distance (mm): mean of all surface-to-surface distances of
                       both directions pooled (MONAI ``compute_average_surface_distance(symmetric=True)``)
volume_pred_mm3        voxel count x voxel volume of the grid the labels are on (the original image grid)
volume_ref_mm3         the same for the reference
chi_pred_ppm           mean image value inside the prediction, in ppm (:func:`evaluate_cases` converts images
                       whose manifest ``units`` is 'ppb'; other units are an error); voxels that are NaN/inf in
                       the image file (``Volume.nonfinite``) are excluded, never counted as 0 ppm
chi_ref_ppm            the same inside the reference
flag                   '' (both non-empty), 'both_empty', 'empty_prediction' or 'empty_reference'
=====================  ==========================================================================================

Surfaces are the voxels removed by one binary erosion (6-connected structuring element), distances are
Euclidean in mm with the grid's (possibly anisotropic) voxel spacing, as in MONAI.

Empty-mask policy (documented and tested):

- both empty: Dice NaN (:func:`dentate_research.data.overlap.dice` with ``empty="nan"``), distances NaN, flag
  ``both_empty``. A DN absent from the reference is a missing or
  failed tracing rather than a true negative, so it must not inflate mean Dice with 1.0; NaN rows are
  excluded from means and counted separately by :func:`dentate_research.evaluation.stats.summarize`
  (MONAI ``DiceMetric(ignore_empty=True)`` also gives NaN).
- prediction empty, reference not (or vice versa): Dice 0, distances NaN (undefined, not infinite),
  flag ``empty_prediction`` / ``empty_reference``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from dentate_research.data.io import DataError, Volume, check_same_grid, load_label
from dentate_research.data.labels import DN_SIDES, SIDE_NAMES
from dentate_research.data.manifest import Case
from dentate_research.data.overlap import dice  # also re-exported to this module's callers
from dentate_research.data.units import UNIT_TO_PPM, case_image_in_ppm, load_case_image_ppm  # noqa: F401 (re-exports)
from dentate_research.schema import REFERENCE_RATER

ID_COLUMNS = ("case", "subject", "site", "group", "method", "fold", "side", "reference")
EMPTY_FLAGS = ("both_empty", "empty_prediction", "empty_reference")
# manifest meta columns copied into the table when present (for failure analysis by age, scanner, algorithm)
META_COLUMNS = ("age", "sex", "field_strength", "voxel_size", "reconstruction")


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm^3 (absolute determinant of the affine's 3x3 part)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to the nearest surface voxel of ``ref`` and back.

    Both masks must be non-empty. Computation is restricted to the union's bounding box (+1 voxel).
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() or not ref.any():
        raise ValueError("surface_distances needs two non-empty masks")
    union = pred | ref
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(axis=0) - 1, 0)
    hi = np.minimum(idx.max(axis=0) + 2, union.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    # pad so that voxels on the array border count as surface, as MONAI does (erosion border value 0)
    p = np.pad(pred[box], 1)
    r = np.pad(ref[box], 1)
    sp, sr = _surface(p), _surface(r)
    spacing = tuple(float(s) for s in spacing)
    dist_to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dist_to_ref[sp], dist_to_pred[sr]


def hd95_and_assd(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float],
                  percentile: float = 95.0) -> tuple[float, float]:
    """(HD95 mm, ASSD mm) of two masks; (NaN, NaN) if either is empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() or not ref.any():
        return float("nan"), float("nan")
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
    assd = float(np.concatenate([d_pr, d_rp]).mean())
    return hd, assd


def _finite_mean(image: np.ndarray | None, mask: np.ndarray, valid: np.ndarray | None) -> float:
    """Mean of ``image`` over ``mask`` without non-finite voxels; NaN when none is left."""
    if image is None:
        return float("nan")
    inside = mask & np.isfinite(image)
    if valid is not None:
        inside &= valid
    return float(image[inside].mean()) if inside.any() else float("nan")


@dataclass
class SideMasks:
    """One side of one case, what every metric of :data:`SIDE_METRICS` reads: boolean ``pred`` / ``ref`` masks on
    one grid (voxel ``spacing`` in mm, ``voxel_mm3``), the QSM ``image`` (ppm, may be None) and the ``valid`` voxels
    whose value may enter a mean."""

    pred: np.ndarray
    ref: np.ndarray
    spacing: tuple[float, float, float]
    voxel_mm3: float
    image: np.ndarray | None = None
    valid: np.ndarray | None = None

    @cached_property
    def distances(self) -> tuple[float, float]:
        """(HD95, ASSD) in mm, computed once for both metrics."""
        return hd95_and_assd(self.pred, self.ref, self.spacing)


SIDE_METRICS: dict[str, Callable[[SideMasks], float]] = {
    "dice": lambda m: dice(m.pred, m.ref, empty="nan"),
    "hd95_mm": lambda m: m.distances[0],
    "assd_mm": lambda m: m.distances[1],
    "volume_pred_mm3": lambda m: int(m.pred.sum()) * m.voxel_mm3,
    "volume_ref_mm3": lambda m: int(m.ref.sum()) * m.voxel_mm3,
    "chi_pred_ppm": lambda m: _finite_mean(m.image, m.pred, m.valid),
    "chi_ref_ppm": lambda m: _finite_mean(m.image, m.ref, m.valid),
}
"""Every per-side metric by column name (units in the name): adding one here adds a column to every per-case table
(:func:`evaluate_case`, :func:`evaluate_cases`, ``evaluate``, the studies)."""
METRIC_COLUMNS = tuple(SIDE_METRICS)


def side_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], voxel_mm3: float,
                 image: np.ndarray | None = None, valid: np.ndarray | None = None) -> dict[str, float | str]:
    """All metrics of :data:`SIDE_METRICS` for one side's boolean masks ``pred`` and ``ref`` on the same grid, and
    ``flag`` (``both_empty`` / ``empty_prediction`` / ``empty_reference`` / '').

    ``valid``: voxels whose image value may enter the mean susceptibility (default: the finite ones)."""
    masks = SideMasks(np.asarray(pred, bool), np.asarray(ref, bool), spacing, voxel_mm3, image, valid)
    n_pred, n_ref = int(masks.pred.sum()), int(masks.ref.sum())
    if n_pred == 0 and n_ref == 0:
        flag = "both_empty"
    elif n_pred == 0:
        flag = "empty_prediction"
    elif n_ref == 0:
        flag = "empty_reference"
    else:
        flag = ""
    return {**{name: metric(masks) for name, metric in SIDE_METRICS.items()}, "flag": flag}


def _as_array(x: Volume | np.ndarray) -> np.ndarray:
    return x.array if isinstance(x, Volume) else np.asarray(x)


def evaluate_case(pred: Volume | np.ndarray, ref: Volume, image: Volume | None = None,
                  sides: Iterable[int] = DN_SIDES) -> list[dict[str, float | str]]:
    """Metrics per side of a predicted label map against a reference label map.

    Args:
        pred: predicted labels (0/1/2) on the reference's grid (a Volume is grid-checked, an array
            shape-checked).
        ref: reference labels; its affine gives the spacing (mm) and the voxel volume (mm^3).
        image: the image (e.g. QSM, ppm) for mean susceptibility; None gives NaN.
        sides: label values to evaluate (1 = left, 2 = right).

    Returns one dict per side with ``side`` ('left'/'right') and the columns of :data:`METRIC_COLUMNS` + flag.
    """
    if isinstance(pred, Volume):
        check_same_grid(ref, pred)
    pred_arr, ref_arr = _as_array(pred), _as_array(ref)
    if pred_arr.shape != ref_arr.shape:
        raise DataError(f"prediction shape {pred_arr.shape} does not match reference shape {ref_arr.shape}")
    image_arr = valid = None
    if image is not None:
        check_same_grid(image, ref)
        image_arr = image.array
        valid = None if image.nonfinite is None else ~image.nonfinite
    spacing, voxel = ref.spacing, voxel_volume_mm3(ref.affine)
    rows = []
    for side in sides:
        row: dict[str, float | str] = {"side": SIDE_NAMES.get(side, str(side))}
        row.update(side_metrics(pred_arr == side, ref_arr == side, spacing, voxel, image_arr, valid))
        rows.append(row)
    return rows


def _image_stem(image: Path | str | None) -> str | None:
    if image is None:
        return None
    name = Path(image).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def segment_output_index(pred_dir: Path) -> dict[str, Path]:
    """``{resolved input path: X_seg path}`` from the ``X_metadata.json`` files of ``segment``'s layout
    (``pred_dir/X/X_metadata.json``), for finished, non-failed cases whose X_seg exists."""
    import json

    index: dict[str, Path] = {}
    for meta_path in sorted(Path(pred_dir).glob("*/*_metadata.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        seg_name = (meta.get("outputs") or {}).get("seg") if isinstance(meta, dict) else None
        if not meta.get("input") or not seg_name or meta.get("status") == "failed":
            continue
        seg = meta_path.parent / seg_name
        if seg.is_file():
            index[str(Path(meta["input"]).resolve())] = seg
    return index


def find_prediction(pred_dir: Path, case_id: str, suffix: str = "_seg.nii.gz", image: Path | str | None = None,
                    index: dict[str, Path] | None = None) -> tuple[Path | None, list[Path]]:
    """Locate a case's prediction in ``pred_dir``; returns (path or None, the paths looked at).

    Looked for, in order: ``<case_id>_seg.nii.gz``, ``<case_id>/<case_id>_seg.nii.gz`` (DentateSeg layout); with
    ``image`` (the case's image file ``X.nii.gz``, whose name need not be the case ID): ``X_seg.nii.gz`` and
    ``X/X_seg.nii.gz`` (what ``segment`` writes for it); with ``index`` (:func:`segment_output_index`): the
    X_seg whose metadata JSON names ``image`` as its input.
    """
    names = [case_id]
    stem = _image_stem(image)
    if stem and stem != case_id:
        names.append(stem)
    candidates = [p for name in names for p in (pred_dir / f"{name}{suffix}", pred_dir / name / f"{name}{suffix}")]
    for c in candidates:
        if c.exists():
            return c, candidates
    if index and image is not None:
        found = index.get(str(Path(image).resolve()))
        if found is not None:
            return found, [*candidates, found]
    return None, candidates


class MissingPredictionError(DataError):
    """A case has no prediction file; the message names the case and the paths looked for."""


def case_identity(case: Case, method: str, fold: str | int | None, reference: str) -> dict[str, str]:
    """The identity columns of a case's per-case rows (:data:`ID_COLUMNS` but ``side``): case, subject, site,
    group (manifest meta, '' if absent), method, fold (``None``: the case's meta 'fold', '' if absent) and
    reference (the rater scored against)."""
    return {"case": case.case_id, "subject": case.subject, "site": case.site,
            "group": str(case.meta.get("group", "")), "method": method,
            "fold": str(fold if fold is not None else case.meta.get("fold", "")), "reference": reference}


def evaluate_cases(cases: list[Case], predictions: Mapping[str, Path] | Path | str, *, method: str,
                   reference: str = REFERENCE_RATER, fold: str | int | None = None, allow_missing: bool = False,
                   progress: bool = True, meta_columns: Iterable[str] = META_COLUMNS) -> pd.DataFrame:
    """Per-case long table (one row per case x side) of a method's predictions against a reference rater.

    Args:
        cases: manifest cases (image, labels, subject, site, meta['group'], meta['fold']).
        predictions: {case_id: path} or a folder searched with :func:`find_prediction` (flat, DentateSeg and
            ``segment`` layouts, also when the image file name is not the case ID).
        method: method/architecture name written in the ``method`` column.
        reference: rater whose labels are the reference ('true' for phantom ground truth).
        fold: value of the ``fold`` column (default: the case's meta 'fold' if present, else '').
        allow_missing: if False a missing prediction raises :class:`MissingPredictionError`; if True the
            case gets rows with flag 'missing_prediction' and NaN metrics (counted by ``summarize``).
        meta_columns: manifest meta fields appended as columns when any case has them.

    Columns: :data:`ID_COLUMNS`, :data:`METRIC_COLUMNS`, ``flag``, ``prediction`` (path), then meta columns.
    """
    if isinstance(predictions, str):
        predictions = Path(predictions)
    meta_columns = [m for m in meta_columns if any(m in c.meta for c in cases)]
    index = segment_output_index(predictions) if isinstance(predictions, Path) else None
    rows = []
    for case in tqdm(cases, desc=f"evaluate {method}", disable=not progress or len(cases) < 2):
        if isinstance(predictions, Path):
            path, looked = find_prediction(predictions, case.case_id, image=case.image, index=index)
        else:
            path = predictions.get(case.case_id)
            looked = [path] if path is not None else []
            if path is not None and not Path(path).exists():
                path = None
        ident = {**case_identity(case, method, fold, reference), **{m: case.meta.get(m, "") for m in meta_columns}}
        if path is None:
            if not allow_missing:
                where = " or ".join(str(p) for p in looked) or "(no path given for this case)"
                raise MissingPredictionError(f"case {case.case_id}: prediction not found; looked for {where} "
                                             "(pass --allow-missing / allow_missing=True to count it instead)")
            for side in DN_SIDES:
                rows.append({**ident, "side": SIDE_NAMES[side], **{m: float("nan") for m in METRIC_COLUMNS},
                             "flag": "missing_prediction", "prediction": ""})
            continue
        image = load_case_image_ppm(case)
        ref = load_label(case.label(reference), reference=image)
        pred = load_label(path, reference=image)
        for side_row in evaluate_case(pred, ref, image):
            rows.append({**ident, **side_row, "prediction": str(path)})
    columns = [*ID_COLUMNS, *METRIC_COLUMNS, "flag", "prediction", *meta_columns]
    table = pd.DataFrame(rows, columns=columns)
    return table
