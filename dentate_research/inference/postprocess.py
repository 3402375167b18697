"""Post-processing of a DN label map: one connected component per side, sides checked in world RAS.

Labels: 0 background, 1 = left DN, 2 = right DN (subject's sides in world coordinates, see
:mod:`dentate_research.data.laterality`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dentate_research.data.geometry import largest_component
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, SIDE_NAMES, check_sides, enforce_world_sides


@dataclass
class PostprocessReport:
    """What post-processing changed and found.

    Attributes:
        sides_swapped: the model's left DN lay right of its right DN in world x, so labels 1/2 were swapped.
        removed_voxels: voxels dropped per side (not in the side's largest 26-connected component).
        empty_sides: sides with no voxel left ('left', 'right').
        left_x_mm, right_x_mm: world x (mm, RAS) of each side's centroid (None if empty).
        midline_x_mm: world x of the reference midline (cerebellar-mask centroid) if given.
        same_hemisphere: both DN centroids lie on one side of the midline (suspicious, flagged).
    """

    sides_swapped: bool = False
    removed_voxels: dict[str, int] = field(default_factory=dict)
    empty_sides: list[str] = field(default_factory=list)
    left_x_mm: float | None = None
    right_x_mm: float | None = None
    midline_x_mm: float | None = None
    same_hemisphere: bool = False


def keep_largest_component_per_side(labels: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Keep each side's largest 26-connected component; returns the new map and voxels removed per side."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    removed: dict[str, int] = {}
    for value in (LEFT_DN, RIGHT_DN):
        side = labels == value
        kept = largest_component(side)
        out[kept] = value
        removed[SIDE_NAMES[value]] = int(side.sum() - kept.sum())
    return out, removed


def postprocess_dn_labels(labels: np.ndarray, affine: np.ndarray, midline_x_mm: float | None = None
                          ) -> tuple[np.ndarray, PostprocessReport]:
    """Clean a predicted DN label map and make its sides agree with world RAS coordinates.

    Args:
        labels: integer map (0/1/2) on the grid described by ``affine`` (voxel -> world mm).
        affine: 4x4 voxel-to-world matrix.
        midline_x_mm: world x (mm) of the subject's midline, e.g. the cerebellar-mask centroid; used only to
            flag both DN lying in the same hemisphere.

    Returns:
        The cleaned uint8 label map and a :class:`PostprocessReport`.
    """
    values = set(np.unique(labels).tolist()) - {0, LEFT_DN, RIGHT_DN}
    if values:
        raise ValueError(f"DN label map has values {sorted(values)}; allowed 0, {LEFT_DN} (left), {RIGHT_DN} (right)")
    cleaned, removed = keep_largest_component_per_side(labels)
    cleaned, swapped = enforce_world_sides(cleaned, affine)
    sides = check_sides(cleaned, affine)
    report = PostprocessReport(sides_swapped=swapped, removed_voxels=removed,
                               left_x_mm=sides["left_x_mm"], right_x_mm=sides["right_x_mm"],  # type: ignore[arg-type]
                               midline_x_mm=midline_x_mm)
    report.empty_sides = [SIDE_NAMES[v] for v in (LEFT_DN, RIGHT_DN) if not np.any(cleaned == v)]
    if midline_x_mm is not None and report.left_x_mm is not None and report.right_x_mm is not None:
        report.same_hemisphere = bool((report.left_x_mm - midline_x_mm) * (report.right_x_mm - midline_x_mm) > 0)
    return cleaned.astype(np.uint8), report


def side_statistics(labels: np.ndarray, image: np.ndarray, spacing_mm: tuple[float, float, float]
                    ) -> dict[str, float | int | None]:
    """DN volume (mm^3), voxel count and mean image value (ppm for QSM) per side.

    The mean is None for an empty side (never 0, which would look like a real susceptibility).
    """
    voxel_mm3 = float(np.prod(spacing_mm))
    stats: dict[str, float | int | None] = {}
    for value in (LEFT_DN, RIGHT_DN):
        name = SIDE_NAMES[value]
        mask = labels == value
        count = int(mask.sum())
        stats[f"{name}_voxels"] = count
        stats[f"{name}_volume_mm3"] = count * voxel_mm3
        stats[f"{name}_mean_susceptibility_ppm"] = float(image[mask].mean()) if count else None
    return stats
