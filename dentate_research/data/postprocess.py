"""Post-processing of a DN label map: sides decided per connected component in world RAS, one component per side.

Labels: 0 background, 1 = left DN, 2 = right DN (subject's sides in world coordinates, see
:mod:`dentate_research.data.labels`).

Sides come from geometry, not from one midline guess: the DN voxels are split into 26-connected components, the
largest one and its partner (at least ``MIN_PAIR_SEPARATION_MM`` away in world x; preferably mirroring it: within
``MAX_PAIR_OFFSET_MM`` in world y and z and of a similar size; then preferably across the cerebellar midline) are the
two nuclei, and the one at smaller world x is the left DN (:func:`assign_sides_by_components`). The midline only
decides the side of a lone nucleus (the other one was not found) and where to cut one component that holds both
nuclei. A midline that runs through a nucleus therefore no longer splits it between the two labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .geometry import largest_component
from .labels import BACKGROUND, DN_SIDES, LEFT_DN, RIGHT_DN, SIDE_NAMES
from .laterality import check_sides, enforce_world_sides

MIN_PAIR_SEPARATION_MM = 10.0
"""Two components whose centroids lie closer than this in world x (mm) are pieces of one nucleus, not the pair
(DN centroids lie 7.6-19.7 mm from the midline each, so the two nuclei are >= 15 mm apart)."""
MAX_PAIR_OFFSET_MM = 14.0
"""The two nuclei of one subject lie at nearly the same world y and z: true labels and true cerebellum masks of the
development sites of the ``cpu`` and ``hard`` phantom presets (140 scans, siteH/siteI not read; head tilt up to 15
degrees) give |dy| median 2.0, max 10.8 mm and |dz| median 1.8, max 9.2 mm (lateral asymmetry, |distance of left
from the midline - distance of right|: median 2.2, max 11.1 mm). 14 mm = the maxima + ~3 mm. Also the QC's limit
(:class:`dentate_research.inference.qc.QCThresholds`)."""
MAX_PAIR_VOLUME_RATIO = 2.0
"""Larger / smaller volume of a subject's two nuclei (phantom truth 1.01-1.63 where both are fully covered; QC flags
larger ratios, :class:`dentate_research.inference.qc.QCThresholds`)."""
BOTH_NUCLEI_MIN_EXTENT_MM = 24.0
"""A lone component wider than this in world x (mm) that crosses the midline holds both nuclei and is cut there
(one DN is 10-20 mm wide)."""


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
        side_assignment: ``world`` (sides from world geometry, :func:`assign_sides_by_components`) or ``model``
            (the network's labels).
        side_evidence: how ``world`` decided: ``pair`` (two components, the one at smaller world x is left),
            ``midline`` (one nucleus found; its side of the cerebellar midline), ``split_at_midline`` (one
            component holding both nuclei, cut at the midline), ``split_at_centroid`` (no midline known: cut at the
            DN voxels' own centroid); ``model`` or ``none`` (no DN voxel).
        model_side_agreement: with ``world``, the fraction of kept DN voxels whose model label matched the side
            they were given (1.0: the model had the sides right; ~0.5: it did not tell left from right).
        components: number of 26-connected DN components before cleaning.
    """

    sides_swapped: bool = False
    removed_voxels: dict[str, int] = field(default_factory=dict)
    empty_sides: list[str] = field(default_factory=list)
    left_x_mm: float | None = None
    right_x_mm: float | None = None
    midline_x_mm: float | None = None
    same_hemisphere: bool = False
    side_assignment: str = "model"
    side_evidence: str = "model"
    model_side_agreement: float | None = None
    components: int = 0


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


def _component_table(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
    """26-connected DN components: the component map (1..n) and per component its ``id``, ``voxels``, world
    centroid ``x``, ``y``, ``z`` (mm) and world x extent ``x_min``, ``x_max`` (mm)."""
    components, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return components, []
    index = np.nonzero(components)
    ids = components[index] - 1
    world = np.asarray(affine, float)[:3, :3] @ np.stack(index).astype(float) + np.asarray(affine, float)[:3, 3:4]
    sizes = np.bincount(ids, minlength=n)
    centroids = [np.bincount(ids, weights=world[axis], minlength=n) / sizes for axis in range(3)]
    low = np.full(n, np.inf)
    high = np.full(n, -np.inf)
    np.minimum.at(low, ids, world[0])
    np.maximum.at(high, ids, world[0])
    return components, [{"id": k + 1, "voxels": float(sizes[k]), "x": float(centroids[0][k]),
                         "y": float(centroids[1][k]), "z": float(centroids[2][k]), "x_min": float(low[k]),
                         "x_max": float(high[k])} for k in range(n)]


def _pick_pair(table: list[dict[str, float]], midline_x_mm: float | None
               ) -> tuple[dict[str, float], dict[str, float] | None]:
    """The two nuclei among the components: the largest, and as its partner a component at least
    ``MIN_PAIR_SEPARATION_MM`` away in world x, chosen from the first non-empty tier of

    1. components that mirror it: within ``MAX_PAIR_OFFSET_MM`` in world y and z and at most
       ``MAX_PAIR_VOLUME_RATIO`` smaller or larger (a small blob elsewhere in the crop is not the other nucleus, even
       when a wrong midline puts it on the other side);
    2. components within ``MAX_PAIR_OFFSET_MM`` in y and z (the other nucleus may be cut by the field of view);
    3. any of them;

    within the tier preferring one on the other side of the midline (a bright vein beside the found nucleus is not
    its partner), then the largest."""
    ranked = sorted(table, key=lambda c: -c["voxels"])
    primary = ranked[0]
    separated = [c for c in ranked[1:] if abs(c["x"] - primary["x"]) >= MIN_PAIR_SEPARATION_MM]
    aligned = [c for c in separated if abs(c["y"] - primary["y"]) <= MAX_PAIR_OFFSET_MM
               and abs(c["z"] - primary["z"]) <= MAX_PAIR_OFFSET_MM]
    mirrored = [c for c in aligned if c["voxels"] * MAX_PAIR_VOLUME_RATIO >= primary["voxels"]]
    candidates = mirrored or aligned or separated
    if midline_x_mm is not None:
        opposite = [c for c in candidates if (c["x"] - midline_x_mm) * (primary["x"] - midline_x_mm) < 0]
        candidates = opposite or candidates
    return primary, (candidates[0] if candidates else None)


@dataclass
class SideAssignment:
    """Result of :func:`assign_sides_by_components` (fields as in :class:`PostprocessReport`)."""

    labels: np.ndarray
    evidence: str
    model_side_agreement: float | None
    removed_voxels: dict[str, int]
    components: int


def assign_sides_by_components(labels: np.ndarray, affine: np.ndarray, midline_x_mm: float | None,
                               merged: bool = False) -> SideAssignment:
    """Decide left (1) / right (2) per connected DN component from world RAS geometry; keep one component per side.

    Every voxel with label 1 or 2 counts as DN (the network's own sides are only compared, never trusted):

    - ``pair``: the largest component and its partner (:func:`_pick_pair`) are the two nuclei; the one at smaller
      world x is the subject's left, whatever the midline says.
    - a lone component (no partner) with a midline: if it crosses the midline with at least a quarter of its
      voxels on each side and is wider than ``BOTH_NUCLEI_MIN_EXTENT_MM``, it holds both nuclei and is cut at the
      midline (``split_at_midline``); otherwise it is one nucleus and takes its centroid's side (``midline``); the
      other side stays empty (flagged downstream).
    - a lone component without a midline: a merged map is cut at its own centroid (``split_at_centroid``), a
      lateral map keeps the network's labels on it (``model``).

    Other components are dropped and counted in ``removed_voxels`` on the side of the kept nucleus they are
    nearer to in world x.
    """
    components, table = _component_table(labels, affine)
    out = np.zeros(labels.shape, np.uint8)
    removed = {SIDE_NAMES[v]: 0 for v in DN_SIDES}
    if not table:
        return SideAssignment(out, "none", None, removed, 0)
    primary, partner = _pick_pair(table, midline_x_mm)
    lone = components == primary["id"]
    if partner is not None:
        left, right = sorted((primary, partner), key=lambda c: c["x"])
        out[components == left["id"]] = LEFT_DN
        out[components == right["id"]] = RIGHT_DN
        evidence, cut_x = "pair", (left["x"] + right["x"]) / 2
    elif midline_x_mm is None:
        if merged:
            out, _ = assign_sides_by_world(lone.astype(np.uint8), affine, primary["x"])
            evidence = "split_at_centroid"
        else:
            out[lone] = labels[lone]
            evidence = "model"
        cut_x = primary["x"]
    else:
        split, _ = assign_sides_by_world(lone.astype(np.uint8), affine, midline_x_mm)
        counts = [int(np.count_nonzero(split == v)) for v in DN_SIDES]
        if min(counts) >= 0.25 * sum(counts) and primary["x_max"] - primary["x_min"] >= BOTH_NUCLEI_MIN_EXTENT_MM:
            out, evidence = split, "split_at_midline"
        else:
            out[lone] = LEFT_DN if primary["x"] < midline_x_mm else RIGHT_DN
            evidence = "midline"
        cut_x = midline_x_mm
    kept_ids = {primary["id"]} | ({partner["id"]} if partner is not None else set())  # every branch keeps these
    for component in table:  # no per-component pass over the array: a noisy map has thousands of components
        if component["id"] not in kept_ids:
            removed[SIDE_NAMES[LEFT_DN if component["x"] < cut_x else RIGHT_DN]] += int(component["voxels"])
    kept = out > 0
    agreement = None if merged or not kept.any() else float(np.mean(labels[kept] == out[kept]))
    return SideAssignment(out, evidence, agreement, removed, len(table))


def postprocess_dn_labels(labels: np.ndarray, affine: np.ndarray, midline_x_mm: float | None = None,
                          side_assignment: str = "world", merged: bool = False
                          ) -> tuple[np.ndarray, PostprocessReport]:
    """Clean a predicted DN label map and make its sides agree with world RAS coordinates.

    Args:
        labels: integer map (0/1/2) on the grid described by ``affine`` (voxel -> world mm).
        affine: 4x4 voxel-to-world matrix.
        midline_x_mm: world x (mm) of the subject's midline, e.g. the cerebellar-mask centroid: places a lone
            nucleus, cuts a component holding both nuclei, and flags both DN lying in one hemisphere.
        side_assignment: ``world`` (default): sides per connected component from world geometry
            (:func:`assign_sides_by_components`), so a network that finds the DN but confuses or merges the sides
            still yields correct labels (the agreement with the network's own labels is reported); ``model``:
            keep the network's labels (largest component per side) and only swap them when left lies right of
            right.
        merged: the map holds one merged DN class (a ``merged`` label-scheme model, value 1 only): its label says
            nothing about sides, so no agreement or swap is reported and ``world`` is always used.

    Returns:
        The cleaned uint8 label map and a :class:`PostprocessReport`.
    """
    values = set(np.unique(labels).tolist()) - {BACKGROUND, LEFT_DN, RIGHT_DN}
    if values:
        raise ValueError(f"DN label map has values {sorted(values)}; allowed 0, {LEFT_DN} (left), {RIGHT_DN} (right)")
    if side_assignment not in ("world", "model"):
        raise ValueError(f"side_assignment '{side_assignment}' unknown; allowed: world, model")
    if side_assignment == "world" or merged:
        sides = assign_sides_by_components(labels, affine, midline_x_mm, merged=merged)
        cleaned, removed, agreement = sides.labels, sides.removed_voxels, sides.model_side_agreement
        # the network's sides were mostly inverted; world geometry corrected them
        swapped = agreement is not None and agreement < 0.5
        mode, evidence, n_components = "world", sides.evidence, sides.components
    else:
        cleaned, removed = keep_largest_component_per_side(labels)
        cleaned, swapped = enforce_world_sides(cleaned, affine)
        mode, evidence, agreement = "model", "model", None
        n_components = int(ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))[1])
    centroids = check_sides(cleaned, affine)
    report = PostprocessReport(sides_swapped=swapped, removed_voxels=removed,
                               left_x_mm=centroids["left_x_mm"], right_x_mm=centroids["right_x_mm"],  # type: ignore[arg-type]
                               midline_x_mm=midline_x_mm, side_assignment=mode, side_evidence=evidence,
                               model_side_agreement=agreement, components=n_components)
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
