"""Stage-specific preprocessing shared by every architecture (the fair-benchmark part).

Both stages turn manifest cases into :class:`StageSample` objects on the grid the network sees:

- localization: the whole head resampled to a coarse spacing (e.g. 4 mm), target = cerebellum mask (0/1);
- segmentation: a crop around the ground-truth cerebellum (or DN) box plus a margin in mm and a random jitter
  (training cases only, so crops resemble what the localizer gives at inference), resampled to the target
  spacing, target = DN labels (0 background, 1 left DN, 2 right DN in world RAS).

Images are normalized per case (:func:`normalize_intensity`); the same function runs at inference inside
:class:`~dentate_research.runtime.stage_model.NetworkStageModel`, and the MONAI loop and the nnU-Net export consume the
very same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data.geometry import BoundingBox, bbox_from_mask, crop, resample_to_spacing
from ..data.io import DataError, Volume, load_image, load_label
from ..data.labels import CEREBELLUM_TARGET
from ..data.labels import label_scheme as segmentation_scheme
from ..data.laterality import midline_x
from ..data.manifest import Case
from ..runtime.crops import crop_box_around, localize
from ..runtime.normalization import normalize_intensity
from ..schema import CropSettings, CropSource, StageName

log = logging.getLogger(__name__)

STAGES = StageName.words()
# Class names come from data/labels.py: localization predicts CEREBELLUM_TARGET; segmentation a scheme of
# LABEL_SCHEMES: ``lateral`` trains 0/1/2 (left/right DN in world RAS); ``merged`` trains one DN class (0/1) and the
# sides are assigned afterwards from world x relative to the cerebellar midline (left-right flips then need no
# label swap). Either way the pipeline's post-processing assigns sides from world x.
CROP_SOURCES = CropSource.words()


def stage_classes(stage: str, label_scheme: str = "lateral") -> list[str]:
    """Class names by label value that the network of ``stage`` predicts under ``label_scheme``."""
    if stage not in STAGES:
        raise ValueError(f"stage '{stage}' unknown; allowed: {list(STAGES)}")
    if stage == "localization":
        return list(CEREBELLUM_TARGET.class_names)
    return list(segmentation_scheme(label_scheme).class_names)  # ValueError for an unknown scheme


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
        midline_x_mm: segmentation only: world x (RAS mm) of the cerebellar midline that post-processing
            uses at validation (places a lone nucleus), as the pipeline does at inference (centroid of the localizer's
            or the true cerebellar mask).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    raw_image: np.ndarray | None = None
    crop_box: BoundingBox | None = None
    dn_native: Volume | None = None
    midline_x_mm: float | None = None
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
                          case_id: str = "", min_crop_mm: Sequence[float] | None = None,
                          localized: np.ndarray | None = None) -> BoundingBox:
    """Crop box (native grid) for the segmentation stage: ``source`` mask box + margin, grown to ``min_crop_mm``
    (as inference does), + jitter (training cases; a jittered box never cuts into the DN).

    ``source``: ``cerebellum`` (true mask), ``dn`` (true DN) or ``localizer`` (``localized``: the localization
    model's mask of this case, i.e. exactly the box inference would cut).
    """
    if source == "cerebellum":
        if cerebellum is None:
            raise DataError(f"case {case_id}: crop source is 'cerebellum' but the manifest has no cerebellum mask; "
                            "set stage.crop.source=dn or add a 'cerebellum' column")
        mask = cerebellum.array > 0
    elif source == "dn":
        mask = dn.array > 0
    elif source == "localizer":
        if localized is None:
            raise ValueError("crop source 'localizer' needs the localizer's mask (stage.crop.localizer_run)")
        mask = localized
    else:
        raise ValueError(f"crop source '{source}' unknown; allowed: {list(CROP_SOURCES)}")
    box = crop_box_around(mask, dn.affine, margin_mm, min_crop_mm)
    dn_box = bbox_from_mask(dn.array > 0, dn.affine, 0.0)
    if box is None:
        raise DataError(f"case {case_id}: empty {source} mask (the localizer found no cerebellum?), cannot crop")
    if dn_box is None:
        raise DataError(f"case {case_id}: empty DN label, cannot make a segmentation sample")
    if rng is not None:
        jitter_vox = np.floor(max(jitter_mm, 0.0) / np.asarray(dn.spacing)).astype(int)
        box = jitter_box(box, dn_box, dn.shape, jitter_vox, rng)  # training: never cut the DN
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
                                rng: np.random.Generator | None = None, localizer: Any = None,
                                min_crop_mm: Sequence[float] | None = None) -> StageSample:
    """Crop (see :func:`segmentation_crop_box`; jitter when ``rng`` is given), resample to ``spacing_mm``.

    With ``crop_cfg["source"] == "localizer"`` the trained ``localizer`` (a StageModel) is run on the native image
    through :func:`dentate_research.runtime.crops.localize`, the function the inference pipeline uses.
    """
    image = load_image(case.image)
    dn = load_label(case.label(label_rater), image)
    cerebellum = load_label(case.cerebellum, image, allowed=(0, 1)) if case.cerebellum is not None else None
    crop_cfg = {**asdict(CropSettings()), **crop_cfg}  # absent keys: the schema's defaults
    source = crop_cfg["source"]
    localized, midline, failed = None, None, False
    if source == "localizer":
        if localizer is None:
            raise ValueError("stage.crop.source=localizer needs a trained localizer: set stage.crop.localizer_run "
                             "to a localization run directory")
        found = localize(localizer, image)
        localized, midline = found.mask, found.midline_x_mm
        if not localized.any():  # inference would fail on this scan: crop around the truth, score it as a miss
            failed = True
            localized = cerebellum.array > 0 if cerebellum is not None else dn.array > 0
            midline = midline_x(localized, image.affine)
            log.warning("case %s: the localizer found no cerebellum; cropping around the true %s (a validation "
                        "case counts as Dice 0)", case.case_id, "cerebellum" if cerebellum is not None else "DN")
    elif cerebellum is not None:
        midline = midline_x(cerebellum.array > 0, image.affine)
    if midline is None:
        midline = midline_x(dn.array > 0, image.affine)
    box = segmentation_crop_box(dn, cerebellum, source, float(crop_cfg["margin_mm"]), float(crop_cfg["jitter_mm"]),
                                rng, case.case_id, min_crop_mm, localized)
    image_crop, dn_crop = crop(image, box), crop(dn, box)
    spacing = _spacing_or_native(spacing_mm, image)
    image_crop = resample_to_spacing(image_crop, spacing)
    dn_crop = resample_to_spacing(dn_crop, spacing, is_label=True)
    return StageSample(case.case_id, normalize_intensity(image_crop.array, **normalization),
                       dn_crop.array.astype(np.uint8), image_crop.affine, raw_image=image_crop.array,
                       crop_box=box, midline_x_mm=midline, extras={"localizer_failed": failed})


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
                    training: bool = False, seed: int = 0, desc: str = "", localizer: Any = None,
                    min_crop_mm: Sequence[float] | None = None) -> list[StageSample]:
    """Prepare every case for ``stage``; jitter (segmentation) only when ``training``. Seeded per case order.

    ``localizer`` / ``min_crop_mm``: see :func:`prepare_segmentation_sample`.
    """
    if stage not in STAGES:
        raise ValueError(f"stage '{stage}' unknown; allowed: {list(STAGES)}")
    rng = np.random.default_rng(seed)
    samples = []
    for case in tqdm(cases, desc=desc or f"preparing {stage} cases", leave=False):
        if stage == "localization":
            samples.append(prepare_localization_sample(case, spacing_mm, normalization, label_rater))
        else:
            samples.append(prepare_segmentation_sample(case, spacing_mm, normalization, crop_cfg or {}, label_rater,
                                                       rng if training else None, localizer, min_crop_mm))
    return samples
