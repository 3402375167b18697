"""Localization and the segmentation crop: ONE implementation for training, validation and inference.

:func:`localize` runs a localization StageModel on a native-grid volume and returns the cerebellar mask (largest
connected component) on that grid; :func:`crop_box_around` grows a mask's bounding box by a margin (mm) and to a
minimum size (mm, default one segmentation patch) exactly as :class:`~dentate_research.inference.pipeline.
DentatePredictor` does. The training stage uses both (``stage.crop.source=localizer``) so that the segmentation
network is trained and validated on the very crops it will see at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.geometry import BoundingBox, bbox_from_mask, labels_to_grid, largest_component
from ..data.io import Volume
from ..data.laterality import midline_x


@dataclass
class Localization:
    """Output of :func:`localize`.

    Attributes:
        mask: bool cerebellar mask on the input volume's grid (largest connected component only).
        dropped_voxels: input-grid voxels of smaller components that were removed.
        midline_x_mm: world x (RAS mm) of the mask centroid, the midline post-processing uses for a lone nucleus
            (None if empty).
    """

    mask: np.ndarray
    dropped_voxels: int
    midline_x_mm: float | None


def localize(localizer: Any, volume: Volume) -> Localization:
    """Cerebellar mask of ``volume`` (canonical RAS) predicted by a localization model.

    With a StageModel that exposes ``predict_probabilities`` the argmax and the connected-component step run on
    the localizer's coarse grid and the mask is brought to the native grid by nearest neighbour (on a 0.6 mm head
    this avoids resampling probability maps of ~25 M voxels just to draw a box); otherwise ``predict`` (labels on
    the input grid) is used.
    """
    if hasattr(localizer, "predict_probabilities"):
        probs, grid = localizer.predict_probabilities(volume)
        coarse = np.argmax(np.asarray(probs), axis=0) > 0
        kept = largest_component(coarse)
        mask = labels_to_grid(kept, grid.affine, volume).astype(bool)
        scale = float(np.prod(grid.spacing) / np.prod(volume.spacing))
        dropped = int(round(int(coarse.sum() - kept.sum()) * scale))
    else:
        raw = np.asarray(localizer.predict(volume))
        if raw.shape != volume.shape:
            raise RuntimeError(f"localization model returned shape {raw.shape}, expected the input grid "
                               f"{volume.shape} (StageModel.predict contract)")
        mask = largest_component(raw > 0)
        dropped = int((raw > 0).sum() - mask.sum())
    return Localization(mask, dropped, midline_x(mask, volume.affine))


def min_crop_from_patch(patch_size: Sequence[int] | None, spacing_mm: Sequence[float] | float | None
                        ) -> tuple[float, float, float] | None:
    """One segmentation patch in mm (patch voxels x target spacing), the smallest crop inference makes."""
    if patch_size is None or spacing_mm is None:
        return None
    size = np.asarray(patch_size, dtype=float) * np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    return tuple(float(s) for s in size)  # type: ignore[return-value]


def crop_box_around(mask: np.ndarray, affine: np.ndarray, margin_mm: float,
                    min_crop_mm: Sequence[float] | None) -> BoundingBox | None:
    """The segmentation crop: the mask's box grown by ``margin_mm`` (mm) and to at least ``min_crop_mm``."""
    return bbox_from_mask(mask, affine, margin_mm, None if min_crop_mm is None else tuple(min_crop_mm))
