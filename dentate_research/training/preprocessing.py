"""Stage-specific preprocessing shared by every architecture (the fair-benchmark part).

Both stages turn manifest cases into :class:`StageSample` objects on the grid the network sees:

- localization: the whole head resampled to a coarse spacing (e.g. 4 mm), target = cerebellum mask (0/1);
- segmentation: a crop around the ground-truth cerebellum (or DN) box plus a margin in mm and a random jitter
  (training cases only, so crops resemble what the localizer gives at inference), resampled to the target
  spacing, target = DN labels (0 background, 1 left DN, 2 right DN in world RAS).

Images are normalized per case (:func:`normalize_intensity`); the same function runs at inference inside
:class:`~dentate_research.training.artifacts.StageModel`, and the MONAI loop and the nnU-Net export consume the
very same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..data.geometry import BoundingBox, bbox_from_mask, crop, resample_to_spacing
from ..data.io import DataError, Volume, load_image, load_label
from ..data.manifest import Case

STAGES = ("localization", "segmentation")
NORMALIZATION_SCHEMES = ("zscore_nonzero", "robust_zscore_nonzero", "none")
CLASSES = {"localization": ["background", "cerebellum"], "segmentation": ["background", "left_dn", "right_dn"]}


def normalize_intensity(array: np.ndarray, scheme: str = "zscore_nonzero",
                        clip_percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Per-case intensity normalization of a QSM array (ppm in, unitless out).

    Schemes:
        ``zscore_nonzero``: z-score using the mean/SD of the non-zero voxels (the head: QSM is 0 outside the
        brain mask); zero voxels stay 0.
        ``robust_zscore_nonzero``: clip the non-zero voxels to ``clip_percentiles`` first (streaks, veins),
        then z-score as above.
        ``none``: unchanged (float32).
    """
    if scheme not in NORMALIZATION_SCHEMES:
        raise ValueError(f"normalization scheme '{scheme}' unknown; allowed: {list(NORMALIZATION_SCHEMES)}")
    out = np.asarray(array, dtype=np.float32).copy()
    if scheme == "none":
        return out
    mask = out != 0
    if mask.sum() < 10:  # (almost) no head voxel: normalize over the whole array
        mask = np.ones_like(out, dtype=bool)
    values = out[mask]
    if scheme == "robust_zscore_nonzero":
        lo, hi = np.percentile(values, clip_percentiles)
        out[mask] = np.clip(values, lo, hi)
        values = out[mask]
    std = float(values.std())
    out[mask] = (values - float(values.mean())) / (std if std > 1e-8 else 1.0)
    return out


@dataclass
class StageSample:
    """One case ready for a stage: normalized image + target on the stage grid (canonical RAS).

    Attributes:
        case_id: manifest case ID.
        image: float32 (X, Y, Z) normalized intensities.
        raw_image: float32 (X, Y, Z) intensities before normalization (ppm), what a StageModel receives.
        label: uint8 (X, Y, Z) target (0/1 localization, 0/1/2 segmentation).
        affine: voxel -> world (mm) of ``image`` and ``label``.
        crop_box: segmentation only: the crop box on the native grid.
        dn_native: localization only: the native DN labels (for bounding-box recall at validation).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    raw_image: np.ndarray | None = None
    crop_box: BoundingBox | None = None
    dn_native: Volume | None = None
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    def raw_volume(self) -> Volume:
        """The un-normalized image (ppm) on the stage grid, as a Volume."""
        return Volume(self.image if self.raw_image is None else self.raw_image, self.affine.copy())

    def label_volume(self) -> Volume:
        return Volume(self.label, self.affine.copy())


def jitter_box(box: BoundingBox, keep: BoundingBox, shape: Sequence[int], jitter_vox: Sequence[int],
               rng: np.random.Generator) -> BoundingBox:
    """Move each face of ``box`` by a random integer in [-jitter, +jitter] voxels, never cutting into ``keep``."""
    start = np.asarray(box.start) + rng.integers(-np.asarray(jitter_vox), np.asarray(jitter_vox) + 1)
    stop = np.asarray(box.stop) + rng.integers(-np.asarray(jitter_vox), np.asarray(jitter_vox) + 1)
    start = np.clip(np.minimum(start, keep.start), 0, shape)
    stop = np.clip(np.maximum(stop, keep.stop), 0, shape)
    return BoundingBox(tuple(int(s) for s in start), tuple(int(s) for s in stop))  # type: ignore[arg-type]


def segmentation_crop_box(dn: Volume, cerebellum: Volume | None, source: str, margin_mm: float,
                          jitter_mm: float = 0.0, rng: np.random.Generator | None = None,
                          case_id: str = "") -> BoundingBox:
    """Crop box (native grid) for the segmentation stage: GT ``source`` mask box + margin (+ jitter)."""
    if source == "cerebellum":
        if cerebellum is None:
            raise DataError(f"case {case_id}: crop source is 'cerebellum' but the manifest has no cerebellum mask; "
                            "set stage.crop.source=dn or add a 'cerebellum' column")
        mask = cerebellum.array > 0
    elif source == "dn":
        mask = dn.array > 0
    else:
        raise ValueError(f"crop source '{source}' unknown; allowed: cerebellum, dn")
    box = bbox_from_mask(mask, dn.affine, margin_mm)
    dn_box = bbox_from_mask(dn.array > 0, dn.affine, 0.0)
    if box is None or dn_box is None:
        raise DataError(f"case {case_id}: empty {source if box is None else 'DN'} mask, cannot make a training crop")
    if jitter_mm > 0 and rng is not None:
        jitter_vox = np.floor(jitter_mm / np.asarray(dn.spacing)).astype(int)
        box = jitter_box(box, dn_box, dn.shape, jitter_vox, rng)
    return box


def _spacing_or_native(spacing_mm: float | Sequence[float] | None, volume: Volume) -> tuple[float, float, float]:
    if spacing_mm is None:
        return volume.spacing
    return tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)))  # type: ignore


def prepare_localization_sample(case: Case, spacing_mm: float | Sequence[float], normalization: dict,
                                label_rater: str = "true") -> StageSample:
    """Whole head at the coarse spacing (mm), target = cerebellum mask; keeps native DN for bbox recall."""
    image = load_image(case.image)
    if case.cerebellum is None:
        raise DataError(f"case {case.case_id}: the localization stage needs a cerebellum mask (manifest column "
                        "'cerebellum')")
    cerebellum = load_label(case.cerebellum, image, allowed=(0, 1))
    dn = load_label(case.label(label_rater), image)
    spacing = _spacing_or_native(spacing_mm, image)
    coarse = resample_to_spacing(image, spacing)
    target = resample_to_spacing(cerebellum, spacing, is_label=True)
    return StageSample(case.case_id, normalize_intensity(coarse.array, **normalization),
                       target.array.astype(np.uint8), coarse.affine, raw_image=coarse.array, dn_native=dn)


def prepare_segmentation_sample(case: Case, spacing_mm: float | Sequence[float] | None, normalization: dict,
                                crop_cfg: dict, label_rater: str = "true",
                                rng: np.random.Generator | None = None) -> StageSample:
    """Crop around the GT box (+ margin, + jitter when ``rng`` is given), resample to ``spacing_mm``."""
    image = load_image(case.image)
    dn = load_label(case.label(label_rater), image)
    cerebellum = load_label(case.cerebellum, image, allowed=(0, 1)) if case.cerebellum is not None else None
    box = segmentation_crop_box(dn, cerebellum, crop_cfg.get("source", "cerebellum"),
                                float(crop_cfg.get("margin_mm", 10.0)), float(crop_cfg.get("jitter_mm", 0.0)),
                                rng, case.case_id)
    image_crop, dn_crop = crop(image, box), crop(dn, box)
    spacing = _spacing_or_native(spacing_mm, image)
    image_crop = resample_to_spacing(image_crop, spacing)
    dn_crop = resample_to_spacing(dn_crop, spacing, is_label=True)
    return StageSample(case.case_id, normalize_intensity(image_crop.array, **normalization),
                       dn_crop.array.astype(np.uint8), image_crop.affine, raw_image=image_crop.array,
                       crop_box=box)


def median_spacing(cases: Sequence[Case]) -> tuple[float, float, float]:
    """Median voxel size (mm) of the cases' images (header only)."""
    import nibabel as nib

    spacings = []
    for c in cases:
        img = nib.as_closest_canonical(nib.load(str(c.image)))
        spacings.append(img.header.get_zooms()[:3])
    return tuple(float(s) for s in np.median(np.asarray(spacings, dtype=float), axis=0))  # type: ignore


def prepare_samples(cases: Sequence[Case], stage: str, *, spacing_mm: float | Sequence[float] | None,
                    normalization: dict, crop_cfg: dict | None = None, label_rater: str = "true",
                    training: bool = False, seed: int = 0, desc: str = "") -> list[StageSample]:
    """Prepare every case for ``stage``; jitter (segmentation) only when ``training``. Seeded per case order."""
    if stage not in STAGES:
        raise ValueError(f"stage '{stage}' unknown; allowed: {list(STAGES)}")
    rng = np.random.default_rng(seed)
    samples = []
    for case in tqdm(cases, desc=desc or f"preparing {stage} cases", leave=False):
        if stage == "localization":
            samples.append(prepare_localization_sample(case, spacing_mm, normalization, label_rater))
        else:
            samples.append(prepare_segmentation_sample(case, spacing_mm, normalization, crop_cfg or {}, label_rater,
                                                       rng if training else None))
    return samples
