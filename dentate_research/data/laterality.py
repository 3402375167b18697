"""Left/right bookkeeping in world (RAS) coordinates.

Label convention everywhere in the project (defined in :mod:`dentate_research.data.labels`): 0 background,
1 = LEFT dentate nucleus, 2 = RIGHT dentate nucleus, where left/right are the subject's sides in world RAS
coordinates (x < midline is left), whatever the array orientation on disk. ``LEFT_DN``, ``RIGHT_DN``,
``SIDE_NAMES`` and ``swap_left_right_labels`` are re-exported from there.
"""

from __future__ import annotations

import numpy as np

from .labels import LEFT_DN, RIGHT_DN, SIDE_NAMES, swap_left_right_labels

__all__ = ["LEFT_DN", "RIGHT_DN", "SIDE_NAMES", "check_sides", "enforce_world_sides", "lr_axis", "midline_x",
           "mirror_left_right", "swap_left_right_labels", "world_centroid"]


def lr_axis(affine: np.ndarray) -> tuple[int, int]:
    """Array axis that runs most along world x (left-right), and its sign (+1: index grows towards Right)."""
    column_x = affine[0, :3]
    axis = int(np.argmax(np.abs(column_x)))
    return axis, int(np.sign(column_x[axis]))


def mirror_left_right(image: np.ndarray, labels: np.ndarray | None, affine: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror an image (and its labels) across the world left-right axis, keeping labels anatomically true.

    After the flip, what was the left DN lies on the right, so labels 1 and 2 are swapped.
    """
    axis, _ = lr_axis(affine)
    flipped = np.flip(image, axis=axis).copy()
    if labels is None:
        return flipped, None
    return flipped, swap_left_right_labels(np.flip(labels, axis=axis).copy())


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """Centre of mass of a boolean mask in world mm (RAS), or None for an empty mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    centre_vox = idx.mean(axis=0)
    return affine[:3, :3] @ centre_vox + affine[:3, 3]


def midline_x(mask: np.ndarray, affine: np.ndarray) -> float | None:
    """World x (RAS mm) of a mask's centroid, the midline that assigns DN sides; None for an empty mask."""
    centre = world_centroid(mask, affine)
    return None if centre is None else float(centre[0])


def check_sides(labels: np.ndarray, affine: np.ndarray) -> dict[str, object]:
    """Report where each side lies in world x (mm) and whether left is really left of right.

    Returns a dict with ``left_x_mm``, ``right_x_mm`` (None when a side is empty) and ``sides_consistent``
    (True when left's centroid is at smaller world x than right's, None when either is empty).
    """
    left = world_centroid(labels == LEFT_DN, affine)
    right = world_centroid(labels == RIGHT_DN, affine)
    consistent = None if left is None or right is None else bool(left[0] < right[0])
    return {
        "left_x_mm": None if left is None else float(left[0]),
        "right_x_mm": None if right is None else float(right[0]),
        "sides_consistent": consistent,
    }


def enforce_world_sides(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, bool]:
    """Swap labels 1/2 if the predicted left DN lies to the right of the predicted right DN in world x.

    Returns (labels, swapped). A swap means the model confused the sides; callers report it.
    """
    report = check_sides(labels, affine)
    if report["sides_consistent"] is False:
        return swap_left_right_labels(labels), True
    return labels, False
