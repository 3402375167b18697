"""Post-processing of a DN label map: one connected component per side, sides checked in world RAS.

Labels: 0 background, 1 = left DN, 2 = right DN (subject's sides in world coordinates, see
:mod:`dentate_research.data.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import largest_component
from .labels import BACKGROUND, DN_SIDES, LEFT_DN, RIGHT_DN, SIDE_NAMES
from .laterality import check_sides, enforce_world_sides, midline_x


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
        side_assignment: ``world`` (sides from world x relative to the midline) or ``model`` (the network's).
        model_side_agreement: with ``world``, the fraction of DN voxels whose model label matched the side
            they lie on (1.0: the model had the sides right; ~0.5: it did not tell left from right).
    """

    sides_swapped: bool = False
    removed_voxels: dict[str, int] = field(default_factory=dict)
    empty_sides: list[str] = field(default_factory=list)
    left_x_mm: float | None = None
    right_x_mm: float | None = None
    midline_x_mm: float | None = None
    same_hemisphere: bool = False
    side_assignment: str = "model"
    model_side_agreement: float | None = None


def keep_largest_component_per_side(labels: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Keep each side's largest 26-connected component; returns the new map and voxels removed per side."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    removed: dict[str, int] = {}
    for value in DN_SIDES:
        side = labels == value
        kept = largest_component(side)
        out[kept] = value
        removed[SIDE_NAMES[value]] = int(side.sum() - kept.sum())
    return out, removed


def assign_sides_by_world(labels: np.ndarray, affine: np.ndarray, midline_x_mm: float
                          ) -> tuple[np.ndarray, float | None]:
    """Relabel every DN voxel (label 1 or 2) by the side of the midline it lies on in world x (RAS mm).

    The network then only has to find the DN; left (1) and right (2) follow from anatomy (x < midline is
    the subject's left), whatever the model's own labels and the array orientation. Returns the new map and
    the fraction of DN voxels whose model label agreed (None when there is no DN voxel).
    """
    dn = labels > 0
    if not dn.any():
        return labels.astype(np.uint8), None
    index = np.nonzero(dn)
    x_mm = affine[0, 0] * index[0] + affine[0, 1] * index[1] + affine[0, 2] * index[2] + affine[0, 3]
    world = np.where(x_mm < midline_x_mm, LEFT_DN, RIGHT_DN).astype(np.uint8)
    out = np.zeros(labels.shape, np.uint8)
    out[index] = world
    return out, float(np.mean(labels[index] == world))


def postprocess_dn_labels(labels: np.ndarray, affine: np.ndarray, midline_x_mm: float | None = None,
                          side_assignment: str = "world", merged: bool = False
                          ) -> tuple[np.ndarray, PostprocessReport]:
    """Clean a predicted DN label map and make its sides agree with world RAS coordinates.

    Args:
        labels: integer map (0/1/2) on the grid described by ``affine`` (voxel -> world mm).
        affine: 4x4 voxel-to-world matrix.
        midline_x_mm: world x (mm) of the subject's midline, e.g. the cerebellar-mask centroid; flags both DN
            lying in the same hemisphere and, with ``side_assignment="world"``, decides the sides.
        side_assignment: ``world`` (default): with a midline, every DN voxel takes the side it lies on, so a
            network that finds the DN but confuses or merges the sides still yields correct labels (the
            agreement with the network's own labels is reported); ``model``: keep the network's labels and
            only swap them when left lies right of right. Without a midline, ``model`` is used.
        merged: the map holds one merged DN class (a ``merged`` label-scheme model, value 1 only): its label says
            nothing about sides, so no agreement or swap is reported; without a midline a merged map is split
            at the DN voxels' own centroid in world x.

    Returns:
        The cleaned uint8 label map and a :class:`PostprocessReport`.
    """
    values = set(np.unique(labels).tolist()) - {BACKGROUND, LEFT_DN, RIGHT_DN}
    if values:
        raise ValueError(f"DN label map has values {sorted(values)}; allowed 0, {LEFT_DN} (left), {RIGHT_DN} (right)")
    if side_assignment not in ("world", "model"):
        raise ValueError(f"side_assignment '{side_assignment}' unknown; allowed: world, model")
    agreement = None
    if merged and midline_x_mm is None:
        midline_x_mm = midline_x(labels > 0, affine)
    mode = "world" if (side_assignment == "world" or merged) and midline_x_mm is not None else "model"
    if mode == "world":
        labels, agreement = assign_sides_by_world(labels, affine, float(midline_x_mm))  # type: ignore[arg-type]
        if merged:
            agreement = None
    cleaned, removed = keep_largest_component_per_side(labels)
    cleaned, swapped = enforce_world_sides(cleaned, affine)
    if agreement is not None and agreement < 0.5:
        swapped = True  # the network's sides were mostly inverted; world assignment corrected them
    sides = check_sides(cleaned, affine)
    report = PostprocessReport(sides_swapped=swapped, removed_voxels=removed,
                               left_x_mm=sides["left_x_mm"], right_x_mm=sides["right_x_mm"],  # type: ignore[arg-type]
                               midline_x_mm=midline_x_mm, side_assignment=mode, model_side_agreement=agreement)
    report.empty_sides = [SIDE_NAMES[v] for v in DN_SIDES if not np.any(cleaned == v)]
    if midline_x_mm is not None and report.left_x_mm is not None and report.right_x_mm is not None:
        report.same_hemisphere = bool((report.left_x_mm - midline_x_mm) * (report.right_x_mm - midline_x_mm) > 0)
    return cleaned.astype(np.uint8), report


def side_statistics(labels: np.ndarray, image: np.ndarray, spacing_mm: tuple[float, float, float],
                    nonfinite: np.ndarray | None = None) -> dict[str, float | int | None]:
    """DN volume (mm^3), voxel count, mean image value (ppm for QSM) and non-finite voxel count per side.

    Voxels that are NaN/inf in ``image`` or marked in ``nonfinite`` (``Volume.nonfinite``: NaN/inf in the file,
    stored as 0) count towards the volume but not towards the mean (they are not 0 ppm); their number is
    ``<side>_nonfinite_voxels``. The mean is None for an empty side or one without a finite voxel (never 0,
    which would look like a real susceptibility).
    """
    voxel_mm3 = float(np.prod(spacing_mm))
    valid = np.isfinite(image)
    if nonfinite is not None:
        valid &= ~np.asarray(nonfinite, bool)
    stats: dict[str, float | int | None] = {}
    for value in DN_SIDES:
        name = SIDE_NAMES[value]
        mask = labels == value
        count = int(mask.sum())
        finite = mask & valid
        n_finite = int(finite.sum())
        stats[f"{name}_voxels"] = count
        stats[f"{name}_volume_mm3"] = count * voxel_mm3
        stats[f"{name}_mean_susceptibility_ppm"] = float(image[finite].mean()) if n_finite else None
        stats[f"{name}_nonfinite_voxels"] = count - n_finite
    return stats
