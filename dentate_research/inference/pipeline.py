"""Two-step dentate nucleus segmentation: localize the cerebellum, crop, segment the DN, clean up, uncrop.

Pipeline for one QSM volume (any stored orientation; the work happens in canonical RAS):

1. ``localizer.predict`` -> binary cerebellar mask on the native grid (the model resamples to its own coarse
   spacing internally); the largest connected component is kept.
2. Bounding box of the mask grown by ``margin_mm`` (mm) and enlarged to at least ``min_crop_mm`` (default: one
   segmentation patch in mm), clipped to the field of view.
3. Crop, then ``segmenter.predict`` (sliding window with Gaussian blending inside the StageModel) -> 0/1/2.
4. Post-processing: sides per connected DN component from world geometry
   (:func:`~dentate_research.data.postprocess.assign_sides_by_components`: of the two nuclei found, the one at
   smaller world x is the left; the cerebellar midline only places a lone nucleus), so left/right never depend on
   the network telling them apart (the agreement with the network's own labels is reported); one component per
   side is kept.
5. Uncrop to the exact input grid.

Everything here runs in memory and returns a :class:`SegmentationResult` (or raises :class:`SegmentationError`);
files are written by :mod:`dentate_research.inference.outputs` (``segment_file(predictor, path, out_dir)``), back in
the input file's own orientation and affine. The writer imports this module, never the reverse.

Failure is loud, never a silent empty mask:

* :class:`SegmentationError` (``reason`` = ``"localizer_empty"`` or ``"no_dn_found"``) is raised when the
  localizer finds nothing or neither DN side survives; the writer then writes no ``X_seg`` for that input.
* Results that exist but need a human look carry ``flags`` (``status == "flagged"``):
  ``left_dn_empty`` / ``right_dn_empty``, ``cerebellum_touches_fov:<faces>`` (the localized region reaches
  the image border, the crop may miss part of the cerebellum), ``dn_touches_crop_border:<faces>``,
  ``dn_same_hemisphere`` (both DN centroids on one side of the cerebellar midline),
  ``dn_sides_from_one_component:<how>`` (no two separate nuclei were found; one component was cut in two),
  ``nonfinite_voxels_in_dn:<n>`` (NaN/inf voxels inside the DN: counted per side in the statistics as
  ``<side>_nonfinite_voxels`` and excluded from the mean susceptibility).
* Plausibility QC after post-processing (:mod:`dentate_research.inference.qc`, thresholds
  ``DentatePredictor.qc_thresholds``) adds flags for a DN volume outside 250-2500 mm^3, a left/right volume ratio
  above 2, a DN centroid too close to or too far from the cerebellar midline, outside the cerebellar mask's box or
  outside its expected part of that box, and low segmenter confidence inside the DN (only for segmenters with
  ``predict_with_confidence``); the measured values are ``SegmentationResult.qc``.
* Informational ``warnings``: ``sides_swapped`` (the model's sides were inverted in world x and were swapped
  back), crop box clipped at the field of view, small components removed.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from dentate_research.data.geometry import (
    BoundingBox,
    bbox_from_mask,
    box_extent_mm,
    crop,
    uncrop,
)
from dentate_research.data.io import DataError, Volume, load_image, to_original_orientation
from dentate_research.data.labels import MERGED
from dentate_research.data.postprocess import PostprocessReport, postprocess_dn_labels, side_statistics
from dentate_research.model_contract import StageModel, card_label_scheme, card_value
from dentate_research.runtime.crops import Localization, crop_box_around, localize, min_crop_from_patch
from dentate_research.schema import CropSettings

from .qc import QCThresholds, qc_status, quality_check

DEFAULT_MARGIN_MM = CropSettings.margin_mm  # mm, the schema's stage.crop.margin_mm
PPM_PLAUSIBLE_P99 = 2.0  # ppm; brain QSM rarely exceeds ~0.5 ppm, ppb or Hz maps are 100-1000x larger
FAILURE_REASONS = ("localizer_empty", "no_dn_found")


class SegmentationError(RuntimeError):
    """The pipeline could not produce a usable DN segmentation for one input.

    Attributes:
        reason: ``"localizer_empty"`` (no cerebellum found) or ``"no_dn_found"`` (both DN sides empty).
        volume: the input volume (canonical RAS).
        cerebellar_mask: the localization output on the input grid, if localization ran.
        crop_box: the crop box, if one was computed.
        timings_s: seconds per finished step.
    """

    def __init__(self, reason: str, message: str, volume: Volume, cerebellar_mask: np.ndarray | None = None,
                 crop_box: BoundingBox | None = None, timings_s: dict[str, float] | None = None):
        super().__init__(message)
        self.reason = reason
        self.volume = volume
        self.cerebellar_mask = cerebellar_mask
        self.crop_box = crop_box
        self.timings_s = dict(timings_s or {})


@dataclass
class SegmentationResult:
    """Output of :meth:`DentatePredictor.predict_volume` for one image (arrays on canonical RAS grids).

    Attributes:
        volume: the input image (canonical RAS, remembers its stored orientation).
        labels: uint8 DN labels on ``volume``'s grid (1 = left, 2 = right in world RAS).
        cerebellar_mask: uint8 localization mask on ``volume``'s grid.
        crop_box: crop box on ``volume``'s canonical voxel grid.
        cropped_image: the crop of ``volume`` (affine shifted, world positions unchanged).
        cropped_labels: DN labels on the crop grid.
        statistics: per-side ``*_volume_mm3``, ``*_voxels``, ``*_mean_susceptibility_ppm``.
        postprocess: what post-processing changed (swap, removed voxels, empty sides).
        flags: problems needing review (see module docstring); empty when all is well.
        qc: plausibility metrics of :func:`~dentate_research.inference.qc.quality_check` (volumes, ratio, DN
            position relative to the cerebellum, segmenter confidence or None, thresholds, ``qc_status``).
        warnings: informational notes.
        timings_s: wall time per step in seconds.
        margin_mm, min_crop_mm: the crop settings used.
    """

    volume: Volume
    labels: np.ndarray
    cerebellar_mask: np.ndarray
    crop_box: BoundingBox
    cropped_image: Volume
    cropped_labels: np.ndarray
    statistics: dict[str, Any]
    postprocess: PostprocessReport
    flags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    margin_mm: float = DEFAULT_MARGIN_MM
    min_crop_mm: tuple[float, float, float] | None = None
    qc: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``"ok"`` or ``"flagged"`` (segmentation written but ``flags`` need a look)."""
        return "flagged" if self.flags else "ok"

    @property
    def sides_swapped(self) -> bool:
        return self.postprocess.sides_swapped

    def labels_in_input_orientation(self) -> tuple[np.ndarray, np.ndarray]:
        """DN labels and affine in the orientation of the input file/array (as stored, not canonical)."""
        return to_original_orientation(self.labels, self.volume)

    def crop_extent_mm(self) -> tuple[float, float, float]:
        return box_extent_mm(self.crop_box, self.volume.affine)


@dataclass(frozen=True)
class PredictorMetadata:
    """What a case's metadata record says about the models and settings that produced it (plain values, so the
    writer needs no predictor).

    Attributes:
        localizer_dir, segmenter_dir: the stage run folders (None for models built in memory).
        localizer_card, segmenter_card: the stages' ModelCards (or dicts with their fields).
        device: torch device string.
        margin_mm: crop margin around the localized region (mm).
        min_crop_mm: minimal crop size per axis (mm), or None.
        model_info: ``model_dir``, ``source``, ``card_name``, ``shadows`` as set by ``segment`` (may be empty).
    """

    localizer_dir: Path | None
    localizer_card: Any
    segmenter_dir: Path | None
    segmenter_card: Any
    device: str
    margin_mm: float
    min_crop_mm: tuple[float, float, float] | None
    model_info: dict[str, Any] = field(default_factory=dict)


def volume_from_array(array: np.ndarray, affine: np.ndarray, path: Path | None = None) -> Volume:
    """Wrap a 3D array with its voxel-to-world affine (any orientation) as a canonical-RAS Volume.

    NaN/inf are set to 0 and remembered in ``Volume.nonfinite``, as in :func:`dentate_research.data.io.load_image`.
    """
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=float)
    if array.ndim != 3:
        raise DataError(f"expected a 3D array, got {array.ndim}D with shape {array.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(f"affine must be a finite, invertible 4x4 voxel-to-world matrix, got\n{affine}")
    img = nib.Nifti1Image(array.astype(np.float32), affine)
    canonical = nib.as_closest_canonical(img)
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.any():
        raise DataError("array contains no finite voxel (all NaN/inf)")
    data = np.where(finite, data, 0.0).astype(np.float32)
    return Volume(data, canonical.affine.copy(), path, affine.copy(), tuple(array.shape),
                  nonfinite=None if finite.all() else ~finite)


def _card_spacing(card: Any) -> np.ndarray | None:
    for name in ("target_spacing_mm", "target_spacing", "spacing_mm"):
        value = card_value(card, name)
        if value is not None:
            return np.broadcast_to(np.asarray(value, dtype=float), (3,))
    return None


def default_min_crop_mm(segmenter_card: Any) -> tuple[float, float, float] | None:
    """One segmentation patch in mm (patch voxels x target spacing), or None if the card lacks either."""
    return min_crop_from_patch(card_value(segmenter_card, "patch_size"), _card_spacing(segmenter_card))


class DentatePredictor:
    """Two-step DN segmentation with trained localization and segmentation run directories.

    Example::

        predictor = DentatePredictor("model/localization", "model/segmentation", device="cpu")
        result = predictor.predict_array(qsm_ppm, affine)   # -> SegmentationResult
        result = predictor.predict_path("scan.nii.gz")        # -> SegmentationResult
        written = segment_file(predictor, "scan.nii.gz", "out/")  # outputs: out/scan/scan_seg.nii.gz, ...

    Args:
        localizer_dir: run directory of a ``localization`` model (holds ``model.json``).
        segmenter_dir: run directory of a ``segmentation`` model.
        device: torch device string (``"cpu"`` or ``"cuda"``).
        margin_mm: crop margin around the localized region in mm; default: the localizer card's
            ``crop_margin_mm`` if set, else 10 mm.
        min_crop_mm: minimal crop size per axis in mm; default: one segmentation patch in mm.

    ``qc_thresholds`` (a :class:`~dentate_research.inference.qc.QCThresholds`, documented defaults) sets the
    plausibility checks; assign another instance to change them. ``model_info`` (a dict, e.g. ``model_dir``,
    ``source``, ``card_name``; set by ``segment``) is copied into the ``models`` section of every metadata JSON
    (through :meth:`metadata`).
    """

    qc_thresholds: QCThresholds = QCThresholds()
    model_info: dict[str, Any] | None = None

    def __init__(self, localizer_dir: Path | str, segmenter_dir: Path | str, device: str = "cpu",
                 margin_mm: float | None = None, min_crop_mm: tuple[float, float, float] | None = None):
        from dentate_research.runtime.stage_model import load_stage  # torch and MONAI: imported when a model loads

        t0 = time.perf_counter()
        localizer = load_stage(localizer_dir, "localization", device)
        segmenter = load_stage(segmenter_dir, "segmentation", device)
        self._configure(localizer, segmenter, margin_mm, min_crop_mm, Path(localizer_dir), Path(segmenter_dir),
                        device)
        self.load_time_s = time.perf_counter() - t0

    @classmethod
    def from_model_dir(cls, model_dir: Path | str, device: str = "cpu", **kwargs: Any) -> DentatePredictor:
        """Build from a model folder holding ``localization/`` and ``segmentation/`` run directories."""
        localizer_dir, segmenter_dir = resolve_model_dir(model_dir)
        return cls(localizer_dir, segmenter_dir, device=device, **kwargs)

    @classmethod
    def from_models(cls, localizer: StageModel, segmenter: StageModel, margin_mm: float | None = None,
                    min_crop_mm: tuple[float, float, float] | None = None,
                    localizer_dir: Path | None = None, segmenter_dir: Path | None = None) -> DentatePredictor:
        """Build from already loaded StageModels (e.g. in a benchmark that reuses them)."""
        self = cls.__new__(cls)
        self._configure(localizer, segmenter, margin_mm, min_crop_mm, localizer_dir, segmenter_dir, "cpu")
        self.load_time_s = 0.0
        return self

    def _configure(self, localizer: StageModel, segmenter: StageModel, margin_mm: float | None,
                   min_crop_mm: tuple[float, float, float] | None, localizer_dir: Path | None,
                   segmenter_dir: Path | None, device: str) -> None:
        self.localizer = localizer
        self.segmenter = segmenter
        self.localizer_dir = localizer_dir
        self.segmenter_dir = segmenter_dir
        self.device = device
        if margin_mm is None:
            margin_mm = card_value(localizer.card, "crop_margin_mm")
        self.margin_mm = float(DEFAULT_MARGIN_MM if margin_mm is None else margin_mm)
        if not np.isfinite(self.margin_mm) or self.margin_mm < 0:
            raise ValueError(f"margin_mm must be a finite number >= 0 mm, got {self.margin_mm}")
        self.min_crop_mm = tuple(min_crop_mm) if min_crop_mm is not None else default_min_crop_mm(segmenter.card)

    def _localize(self, volume: Volume) -> Localization:
        """Cerebellar mask on ``volume``'s grid (largest component): :func:`dentate_research.runtime.crops.localize`,
        the same function that cuts the segmentation crops at training and validation."""
        return localize(self.localizer, volume)

    # ------------------------------------------------------------------ public API
    def predict_array(self, array: np.ndarray, affine: np.ndarray) -> SegmentationResult:
        """Segment a QSM array (ppm) given its voxel-to-world affine (any orientation).

        ``result.labels_in_input_orientation()`` gives the labels in ``array``'s own orientation.
        """
        return self.predict_volume(volume_from_array(array, affine))

    def predict_path(self, path: Path | str) -> SegmentationResult:
        """Read one NIfTI file and segment it in memory (nothing is written; see
        :func:`dentate_research.inference.outputs.segment_file` for the files).

        ``timings_s["read"]`` (s) is the read time, also on a :class:`SegmentationError`. Raises ``DataError``
        for a bad input.
        """
        t0 = time.perf_counter()
        volume = load_image(Path(path))
        read_s = time.perf_counter() - t0
        try:
            result = self.predict_volume(volume)
        except SegmentationError as failure:
            failure.timings_s = {"read": read_s, **failure.timings_s}
            raise
        result.timings_s = {"read": read_s, **result.timings_s}
        return result

    def metadata(self) -> PredictorMetadata:
        """The models and settings of this predictor, as the writer records them."""
        return PredictorMetadata(self.localizer_dir, self.localizer.card, self.segmenter_dir, self.segmenter.card,
                                 str(self.device), self.margin_mm, self.min_crop_mm, dict(self.model_info or {}))

    def predict_volume(self, volume: Volume) -> SegmentationResult:
        """Run the two steps on a canonical-RAS Volume (see the module docstring)."""
        timings: dict[str, float] = {}
        flags: list[str] = []
        warnings: list[str] = units_warnings(volume)

        t0 = time.perf_counter()
        low, high = float(volume.array.min()), float(volume.array.max())
        if low == high:  # no signal: a network's output on a constant image means nothing, so do not ask one
            raise SegmentationError(
                "localizer_empty", f"{volume.path or 'input'}: the image is constant ({low:g} everywhere), there is "
                "no cerebellum to localize; is this a QSM image of the head in ppm?", volume,
                np.zeros(volume.shape, np.uint8), timings_s=timings)
        localization = self._localize(volume)
        mask, dropped = localization.mask, localization.dropped_voxels
        timings["localization"] = time.perf_counter() - t0
        if not mask.any():
            raise SegmentationError(
                "localizer_empty", f"{volume.path or 'input'}: the localization model found no cerebellum "
                "(empty mask); is this a QSM image of the head in ppm?", volume, mask.astype(np.uint8),
                timings_s=timings)
        if dropped:
            warnings.append(f"localization: removed {dropped} voxels outside the largest connected component")

        t0 = time.perf_counter()
        tight = bbox_from_mask(mask, volume.affine, 0.0)
        assert tight is not None  # mask is non-empty
        faces = tight.touches_border(volume.shape)
        if faces:
            flags.append(f"cerebellum_touches_fov:{','.join(faces)}")
        box = crop_box_around(mask, volume.affine, self.margin_mm, self.min_crop_mm)
        assert box is not None
        clipped = [f for f in box.touches_border(volume.shape) if f not in faces]
        if clipped:
            warnings.append(f"crop box clipped at the field of view ({','.join(clipped)}): margin or minimum "
                            "crop size not fully available")
        cropped = crop(volume, box)
        timings["crop"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        raw_labels, confidence, confidence_measure = _segment(self.segmenter, cropped)
        timings["segmentation"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        midline = localization.midline_x_mm
        merged = card_label_scheme(self.segmenter.card) == MERGED  # one DN class
        cropped_labels, report = postprocess_dn_labels(raw_labels, cropped.affine, midline, merged=merged)
        if len(report.empty_sides) == 2:
            raise SegmentationError(
                "no_dn_found", f"{volume.path or 'input'}: the segmentation model found no dentate nucleus in "
                f"the crop {box.to_dict()} (voxels, canonical RAS)", volume, mask.astype(np.uint8), box, timings)
        flags.extend(f"{side}_dn_empty" for side in report.empty_sides)
        if report.same_hemisphere:
            flags.append("dn_same_hemisphere")
        if report.side_evidence.startswith("split_at_"):  # both sides cut out of one blob: no nucleus pair found
            flags.append(f"dn_sides_from_one_component:{report.side_evidence}")
        dn_box = bbox_from_mask(cropped_labels > 0, cropped.affine, 0.0)
        dn_faces = [] if dn_box is None else dn_box.touches_border(cropped.shape)
        if dn_faces:
            flags.append(f"dn_touches_crop_border:{','.join(dn_faces)}")
        if report.sides_swapped:
            warnings.append("sides_swapped: the model's left DN lay right of its right DN in world x; labels 1/2 "
                            "were swapped to match world RAS")
        elif report.model_side_agreement is not None and report.model_side_agreement < 0.95:
            warnings.append(f"sides assigned from world x: the model's own left/right labels agreed on only "
                            f"{100 * report.model_side_agreement:.0f}% of DN voxels")
        for side, n in report.removed_voxels.items():
            if n:
                warnings.append(f"{side} DN: removed {n} voxels outside the largest connected component")
        labels = uncrop(cropped_labels, box, volume.shape)
        nonfinite = None if volume.nonfinite is None else volume.nonfinite[box.slices]
        stats = side_statistics(cropped_labels, cropped.array, cropped.spacing, nonfinite=nonfinite)
        n_nonfinite = int(stats["left_nonfinite_voxels"] or 0) + int(stats["right_nonfinite_voxels"] or 0)
        if n_nonfinite:  # NaN/inf inside the DN: excluded from the mean susceptibility, but a human must look
            flags.append(f"nonfinite_voxels_in_dn:{n_nonfinite}")
        timings["postprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        qc_flags, qc = quality_check(cropped_labels, cropped.affine, mask, volume.affine, confidence,
                                     midline_x_mm=midline, thresholds=self.qc_thresholds,
                                     confidence_measure=confidence_measure)
        flags.extend(qc_flags)
        qc["qc_status"] = qc_status(flags, qc["confidence_checked"])
        timings["qc"] = time.perf_counter() - t0

        return SegmentationResult(volume=volume, labels=labels, cerebellar_mask=mask.astype(np.uint8),
                                  crop_box=box, cropped_image=cropped, cropped_labels=cropped_labels,
                                  statistics=stats, postprocess=report, flags=flags, warnings=warnings,
                                  timings_s=timings, margin_mm=self.margin_mm, min_crop_mm=self.min_crop_mm, qc=qc)


def units_warnings(volume: Volume) -> list[str]:
    """Warn when the image does not look like QSM in ppm (e.g. ppb or Hz): reported means keep the file's units."""
    values = np.abs(volume.array[volume.array != 0])
    if values.size == 0:
        return []
    p99 = float(np.percentile(values, 99))
    if p99 > PPM_PLAUSIBLE_P99:
        return [f"units: the 99th percentile of |image| is {p99:.3g}, implausible for QSM in ppm (ppb or Hz?); "
                "segmentation is unaffected (per-scan normalization) but mean susceptibility is reported in the "
                "file's units"]
    return []


def _segment(segmenter: StageModel, cropped: Volume) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """DN labels on the crop grid, the segmenter's per-voxel confidence there and what that confidence measures.

    ``dn_vs_background`` (max(p_background, 1 - p_background)) when ``predict_with_confidence`` accepts
    ``merge_foreground``: sides are re-assigned from world x, so a network splitting a DN's probability between
    left and right is not uncertain about anything the pipeline uses; ``max_class`` (max over all classes) for
    other models with ``predict_with_confidence``; ``(labels, None, None)`` without it (QC records confidence as
    None and skips that check).
    """
    method = getattr(segmenter, "predict_with_confidence", None)
    if method is None:
        return _as_labels(segmenter.predict(cropped), cropped, "segmentation"), None, None
    try:
        merge = "merge_foreground" in inspect.signature(method).parameters
    except (TypeError, ValueError):  # builtins / C callables without a signature
        merge = False
    labels, confidence = method(cropped, merge_foreground=True) if merge else method(cropped)
    confidence = np.asarray(confidence, dtype=np.float32)
    if confidence.shape != cropped.shape:
        raise RuntimeError(f"segmentation model returned confidence of shape {confidence.shape}, expected the "
                           f"input grid {cropped.shape} (StageModel.predict_with_confidence contract)")
    return _as_labels(labels, cropped, "segmentation"), confidence, "dn_vs_background" if merge else "max_class"


def _as_labels(prediction: np.ndarray, volume: Volume, stage: str) -> np.ndarray:
    """Check a StageModel honoured the contract (labels on the input grid)."""
    prediction = np.asarray(prediction)
    if prediction.shape != volume.shape:
        raise RuntimeError(f"{stage} model returned shape {prediction.shape}, expected the input grid "
                           f"{volume.shape} (StageModel.predict contract)")
    return prediction.astype(np.uint8)


def resolve_model_dir(model_dir: Path | str) -> tuple[Path, Path]:
    """``(localization_dir, segmentation_dir)`` inside a two-step model folder, with a clear error if absent."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: model folder not found")
    missing = [name for name in ("localization", "segmentation") if not (model_dir / name / "model.json").is_file()]
    if missing:
        names = ", ".join(f"{m}/model.json" for m in missing)
        raise DataError(f"{model_dir}: not a two-step model folder; missing {names}"
                        " (expected localization/ and segmentation/ run directories; or pass --localizer and "
                        "--segmenter)")
    return model_dir / "localization", model_dir / "segmentation"
