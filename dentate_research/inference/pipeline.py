"""Two-step dentate nucleus segmentation: localize the cerebellum, crop, segment the DN, clean up, uncrop.

Pipeline for one QSM volume (any stored orientation; the work happens in canonical RAS):

1. ``localizer.predict`` -> binary cerebellar mask on the native grid (the model resamples to its own coarse
   spacing internally); the largest connected component is kept.
2. Bounding box of the mask grown by ``margin_mm`` (mm) and enlarged to at least ``min_crop_mm`` (default: one
   segmentation patch in mm), clipped to the field of view.
3. Crop, then ``segmenter.predict`` (sliding window with Gaussian blending inside the StageModel) -> 0/1/2.
4. Post-processing: every DN voxel takes the side of the cerebellar midline (mask centroid, world x) it lies
   on, so left/right never depend on the network telling them apart
   (:func:`~dentate_research.inference.postprocess.assign_sides_by_world`; the agreement with the network's
   own labels is reported); then the largest connected component per side.
5. Uncrop to the exact input grid; files are written back in the input file's own orientation and affine.

Failure is loud, never a silent empty mask:

* :class:`SegmentationError` (``reason`` = ``"localizer_empty"`` or ``"no_dn_found"``) is raised when the
  localizer finds nothing or neither DN side survives; no ``X_seg`` is written for that input.
* Results that exist but need a human look carry ``flags`` (``status == "flagged"``):
  ``left_dn_empty`` / ``right_dn_empty``, ``cerebellum_touches_fov:<faces>`` (the localized region reaches
  the image border, the crop may miss part of the cerebellum), ``dn_touches_crop_border:<faces>``,
  ``dn_same_hemisphere`` (both DN centroids on one side of the cerebellar midline).
* Informational ``warnings``: ``sides_swapped`` (the model's sides were inverted in world x and were swapped
  back), crop box clipped at the field of view, small components removed.
"""

from __future__ import annotations

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
    largest_component,
    uncrop,
)
from dentate_research.data.io import DataError, Volume, load_image, to_original_orientation
from dentate_research.data.laterality import world_centroid

from .postprocess import PostprocessReport, postprocess_dn_labels, side_statistics
from .protocol import StageModel, card_value, load_stage

DEFAULT_MARGIN_MM = 10.0
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


def volume_from_array(array: np.ndarray, affine: np.ndarray, path: Path | None = None) -> Volume:
    """Wrap a 3D array with its voxel-to-world affine (any orientation) as a canonical-RAS Volume.

    NaN/inf are set to 0 as in :func:`dentate_research.data.io.load_image`.
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
    return Volume(data, canonical.affine.copy(), path, affine.copy(), tuple(array.shape))


def _card_spacing(card: Any) -> np.ndarray | None:
    for name in ("target_spacing_mm", "target_spacing", "spacing_mm"):
        value = card_value(card, name)
        if value is not None:
            return np.broadcast_to(np.asarray(value, dtype=float), (3,))
    return None


def default_min_crop_mm(segmenter_card: Any) -> tuple[float, float, float] | None:
    """One segmentation patch in mm (patch voxels x target spacing), or None if the card lacks either."""
    patch = card_value(segmenter_card, "patch_size")
    spacing = _card_spacing(segmenter_card)
    if patch is None or spacing is None:
        return None
    size = np.asarray(patch, dtype=float) * spacing
    return tuple(float(s) for s in size)  # type: ignore[return-value]


class DentatePredictor:
    """Two-step DN segmentation with trained localization and segmentation run directories.

    Example::

        predictor = DentatePredictor("model/localization", "model/segmentation", device="cpu")
        result = predictor.predict_array(qsm_ppm, affine)   # -> SegmentationResult
        written = predictor.predict_file("scan.nii.gz", "out/")  # -> out/scan/scan_seg.nii.gz, ...

    Args:
        localizer_dir: run directory of a ``localization`` model (holds ``model.json``).
        segmenter_dir: run directory of a ``segmentation`` model.
        device: torch device string (``"cpu"`` or ``"cuda"``).
        margin_mm: crop margin around the localized region in mm; default: the localizer card's
            ``crop_margin_mm`` if set, else 10 mm.
        min_crop_mm: minimal crop size per axis in mm; default: one segmentation patch in mm.
    """

    def __init__(self, localizer_dir: Path | str, segmenter_dir: Path | str, device: str = "cpu",
                 margin_mm: float | None = None, min_crop_mm: tuple[float, float, float] | None = None):
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
        if self.margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0 mm, got {self.margin_mm}")
        self.min_crop_mm = tuple(min_crop_mm) if min_crop_mm is not None else default_min_crop_mm(segmenter.card)

    def _localize(self, volume: Volume) -> tuple[np.ndarray, int]:
        """Cerebellar mask on ``volume``'s grid (largest component) and the voxels dropped outside it.

        When the StageModel exposes ``predict_probabilities`` (the training package's StageModel does), the
        argmax and the connected-component step run on the localizer's coarse grid and the mask is brought to the
        native grid by nearest neighbour: on a 0.6 mm whole head this avoids linearly resampling two probability
        maps of ~25 M voxels just to draw a bounding box. Otherwise ``predict`` (labels on the input grid) is used.
        """
        if hasattr(self.localizer, "predict_probabilities"):
            probs, grid = self.localizer.predict_probabilities(volume)
            coarse = np.argmax(np.asarray(probs), axis=0) > 0
            kept = largest_component(coarse)
            mask = labels_to_grid(kept, grid.affine, volume)
            dropped_coarse = int(coarse.sum() - kept.sum())
            scale = float(np.prod(grid.spacing) / np.prod(volume.spacing))
            return mask, int(round(dropped_coarse * scale))
        raw = _as_labels(self.localizer.predict(volume), volume, "localization") > 0
        mask = largest_component(raw)
        return mask, int(raw.sum() - mask.sum())

    # ------------------------------------------------------------------ public API
    def predict_array(self, array: np.ndarray, affine: np.ndarray) -> SegmentationResult:
        """Segment a QSM array (ppm) given its voxel-to-world affine (any orientation).

        ``result.labels_in_input_orientation()`` gives the labels in ``array``'s own orientation.
        """
        return self.predict_volume(volume_from_array(array, affine))

    def predict_file(self, path: Path | str, out_dir: Path | str, *, overwrite: bool = False,
                     overlay: bool = True) -> Any:
        """Segment one NIfTI file and write the DentateSeg-compatible outputs under ``out_dir/<name>/``.

        Returns the written :class:`~dentate_research.inference.outputs.CaseOutputs`. Raises ``FileExistsError``
        (before any computation) if outputs exist and ``overwrite`` is False, ``DataError`` for bad input and
        :class:`SegmentationError` after writing ``X_metadata.json`` (status ``failed``) and the volumes row.
        """
        from .outputs import check_outputs_free, write_case_outputs, write_failure_outputs

        path = Path(path)
        out_dir = Path(out_dir)
        check_outputs_free(out_dir, [path], overwrite=overwrite)
        t0 = time.perf_counter()
        volume = load_image(path)
        read_s = time.perf_counter() - t0
        try:
            result = self.predict_volume(volume)
        except SegmentationError as failure:
            failure.timings_s = {"read": read_s, **failure.timings_s}
            write_failure_outputs(failure, self, out_dir, overwrite=overwrite)
            raise
        result.timings_s = {"read": read_s, **result.timings_s}
        return write_case_outputs(result, self, out_dir, overwrite=overwrite, overlay=overlay)

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
        mask, dropped = self._localize(volume)
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
        box = bbox_from_mask(mask, volume.affine, self.margin_mm, self.min_crop_mm)
        assert box is not None
        clipped = [f for f in box.touches_border(volume.shape) if f not in faces]
        if clipped:
            warnings.append(f"crop box clipped at the field of view ({','.join(clipped)}): margin or minimum "
                            "crop size not fully available")
        cropped = crop(volume, box)
        timings["crop"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        raw_labels = _as_labels(self.segmenter.predict(cropped), cropped, "segmentation")
        timings["segmentation"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        centre = world_centroid(mask, volume.affine)
        midline = None if centre is None else float(centre[0])
        cropped_labels, report = postprocess_dn_labels(raw_labels, cropped.affine, midline)
        if len(report.empty_sides) == 2:
            raise SegmentationError(
                "no_dn_found", f"{volume.path or 'input'}: the segmentation model found no dentate nucleus in "
                f"the crop {box.to_dict()} (voxels, canonical RAS)", volume, mask.astype(np.uint8), box, timings)
        flags.extend(f"{side}_dn_empty" for side in report.empty_sides)
        if report.same_hemisphere:
            flags.append("dn_same_hemisphere")
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
        stats = side_statistics(cropped_labels, cropped.array, cropped.spacing)
        timings["postprocess"] = time.perf_counter() - t0

        return SegmentationResult(volume=volume, labels=labels, cerebellar_mask=mask.astype(np.uint8),
                                  crop_box=box, cropped_image=cropped, cropped_labels=cropped_labels,
                                  statistics=stats, postprocess=report, flags=flags, warnings=warnings,
                                  timings_s=timings, margin_mm=self.margin_mm, min_crop_mm=self.min_crop_mm)


def labels_to_grid(labels: np.ndarray, source_affine: np.ndarray, target: Volume) -> np.ndarray:
    """Nearest-neighbour transfer of a label map from one grid to ``target``'s grid through world mm.

    Axis-aligned grids (e.g. a coarse resampling of the same image) use separable index look-ups (fast on
    25 M-voxel volumes); other grids fall back to ``scipy.ndimage.affine_transform`` (order 0). Target voxels
    outside the source grid get 0.
    """
    target_to_source = np.linalg.inv(source_affine) @ target.affine
    linear = target_to_source[:3, :3]
    if np.allclose(linear, np.diag(np.diag(linear)), atol=1e-6):
        index = []
        valid = []
        for axis, n in enumerate(target.shape):
            idx = np.rint(linear[axis, axis] * np.arange(n) + target_to_source[axis, 3]).astype(int)
            valid.append((idx >= 0) & (idx < labels.shape[axis]))
            index.append(np.clip(idx, 0, labels.shape[axis] - 1))
        out = labels[np.ix_(*index)]
        inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        return np.where(inside, out, 0).astype(labels.dtype)
    from scipy import ndimage

    moved = ndimage.affine_transform(labels.astype(np.uint8), linear, target_to_source[:3, 3],
                                     output_shape=target.shape, order=0, mode="constant", cval=0)
    return moved.astype(labels.dtype)


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
