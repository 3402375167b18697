"""Plausibility checks (QC) of a finished DN segmentation: flags results that look wrong.

A model applied to images unlike its training data can return two tidy, bright, plausible-looking blobs in the
wrong place (Dice 0 on both sides) with nothing else amiss. These checks look at what is known about the dentate
nucleus independently of the network, and at the network's own confidence. Every failed check adds a flag to
:attr:`~dentate_research.inference.pipeline.SegmentationResult.flags` (status ``flagged``, ``segment`` exit code 4);
the measured values go to ``qc`` in ``X_metadata.json`` and ``volumes.csv``.

Flags (``<side>`` = ``left`` / ``right``; the text after ``:`` is the measured value):

``<side>_dn_volume_implausible:<V>mm3``
    DN volume per side outside [``min_volume_mm3``, ``max_volume_mm3``] = [250, 2500] mm^3. Sources: healthy
    adults roughly 700-1200 mm^3 per side, Friedreich ataxia 484-1098 mm^3 (mean ~730) (Shiraishi et al.,
    Radiol Artif Intell 2025, doi 10.1148/ryai.240478, and the DN volumetry it cites). Margins of about 2x below the
    smallest and 2x above the largest reported value cover rater differences (interrater ICC 0.78), thick-slice
    partial volume and younger or atrophic subjects; a value outside them is a segmentation failure, not anatomy.
``dn_volume_ratio_implausible:<R>``
    larger / smaller DN volume > ``max_volume_ratio`` = 2.0. Within one subject the two nuclei are similar
    (phantom truth, 48 cases: ratio 1.01-1.63); a ratio above 2 means one side is partly missed or leaks into a
    neighbouring structure (e.g. a vein). Example: the default model's left DN of 304 mm^3 (Dice 0.54, truth
    728 mm^3) beside a right DN of 664 mm^3, ratio 2.18.
``<side>_dn_lateral_offset_implausible:<D>mm``
    distance in world x between the DN centroid and the cerebellar midline (world x of the localizer mask's
    centroid, the same midline that places a lone nucleus) outside [``min_lateral_mm``, ``max_lateral_mm``] = [5, 30]
    mm. Sources: DN centres of mass at x = -13.8 / +13.8 mm in MNI space, large inter-subject variability;
    phantom truth (``tiny`` preset, seeds 0-3, 48 cases, 96 nuclei, true labels and cerebellum masks)
    7.6-19.7 mm, mean 14.2, SD 2.4.
``<side>_dn_outside_cerebellum_box:<axes>``
    the DN centroid lies outside the world bounding box of the cerebellar mask along the named axes (x, y, z).
``<side>_dn_position_implausible:<axis>=<p>,...``
    normalized position of the DN centroid inside the cerebellar mask's world bounding box (0 = posterior /
    inferior edge, 1 = anterior / superior edge) outside ``position_y_range`` = (0.30, 0.95) or
    ``position_z_range`` = (0.25, 0.90): the DN lies in the anterior half of the cerebellum, at about mid-height.
    Measured with true labels and true cerebellum masks: ``tiny`` phantoms (the same 96 nuclei) y 0.57-0.79
    (mean 0.66, SD 0.035), z 0.44-0.66 (mean 0.55, SD 0.041); the two simpler synthetic families of the tests
    (``tests/synthetic_dn.py``, ``tests/inference_helpers.py``) y 0.51-0.57, z 0.48-0.57. With a localizer's coarse
    mask (4-6 mm grid) the box moves: correctly found nuclei measured y 0.38-0.86 and z 0.36-0.86 (the
    previously shipped default model on phantoms and on the tests' synthetic family, the tests' toy model on toy
    scans). The ranges are the truth extremes widened by about 0.2 (covering those shifts) and end short of the
    box edges.
``dn_pair_asymmetric:<measure>=<D>mm,...``
    the two nuclei are not where a left/right pair lies: their centroids differ by more than
    ``max_pair_offset_mm`` in world y (anterior-posterior) or z (superior-inferior), or their distances from the
    cerebellar midline differ by more than ``max_lateral_asymmetry_mm``. A well-found pair mirrors itself across
    the midline; a side whose label lies on a vein, on a neighbouring nucleus or only on part of the DN breaks that
    symmetry although its own volume and position are plausible. Measured with true labels and true cerebellum
    masks on the development sites of the ``cpu`` and ``hard`` phantom presets (140 scans, head tilt up to 15
    degrees): |dy| at most 10.8 mm, |dz| 9.2 mm, lateral asymmetry 11.1 mm; the limits (14 mm each) add ~3 mm for
    the localizer's coarse midline.
``<side>_dn_low_confidence:mean=<m>,uncertain=<f>``
    the segmenter's confidence inside a side's final DN voxels: mean below ``min_mean_confidence`` = 0.80, or
    more than ``max_uncertain_fraction`` = 0.40 of the voxels below ``uncertain_probability`` = 0.70. The
    confidence (``confidence.measure`` in the metrics) is ``dn_vs_background`` = max(p_background,
    1 - p_background) when the segmenter's ``predict_with_confidence`` accepts ``merge_foreground`` (the training
    package's StageModel), else ``max_class`` = max over classes. DN-vs-background is used because sides are
    assigned from world x: 3-class networks split a DN's probability between left and right (the shipped default
    model: mean max-class probability 0.57-0.72 on nuclei found with Dice 0.5-0.95, so a max-class threshold of
    0.7 flagged every result) although they are sure it is DN. Measured DN-vs-background means: correct nuclei
    0.86-0.99 (the previously shipped default model on phantoms and on the tests' synthetic family
    ``tests/synthetic_dn.py``, the tests' toy model on toy scans); misplaced blobs of that model on the synthetic
    family (Dice 0) 0.79-0.84. The check is a
    second line of defence: those blobs also failed the volume and position checks. It runs only for segmenters
    that expose ``predict_with_confidence``; otherwise ``confidence`` is None and ``qc_status`` says so.

Empty sides are flagged by the pipeline (``<side>_dn_empty``) and skipped here. :class:`QCThresholds` holds the
defaults; ``DentatePredictor.qc_thresholds`` can be replaced to tighten or loosen them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dentate_research.data.labels import DN_SIDES
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, SIDE_NAMES, world_centroid
from dentate_research.data.postprocess import MAX_PAIR_OFFSET_MM, MAX_PAIR_VOLUME_RATIO

AXES = ("x", "y", "z")
# True labels and true cerebellum masks, development sites of the cpu and hard presets (140 scans; siteH/siteI not
# read): lateral asymmetry median 2.2, max 11.1 mm; the limit adds ~3 mm (a localizer's 4 mm mask moves the midline).
LATERAL_ASYMMETRY_MM = 14.0
QC_PASS, QC_PASS_NO_CONFIDENCE, QC_FLAGGED, QC_FAILED = "pass", "pass_without_confidence", "flagged", "failed"


@dataclass(frozen=True)
class QCThresholds:
    """Plausible ranges of a DN segmentation (see the module docstring for the sources of each default).

    Attributes:
        min_volume_mm3, max_volume_mm3: DN volume per side (mm^3).
        max_volume_ratio: larger / smaller DN volume.
        min_lateral_mm, max_lateral_mm: |world x of DN centroid - cerebellar midline| (mm).
        position_y_range, position_z_range: allowed normalized position of each DN centroid inside the
            cerebellar mask's world bounding box (0 = posterior / inferior edge, 1 = anterior / superior edge).
        min_mean_confidence: lowest allowed mean segmenter confidence inside a side's DN voxels.
        uncertain_probability: a DN voxel whose confidence is below this is "uncertain".
        max_uncertain_fraction: highest allowed fraction of uncertain voxels in a side's DN.
        max_pair_offset_mm: largest allowed |difference| of the two DN centroids in world y and in world z (mm).
        max_lateral_asymmetry_mm: largest allowed |difference| of the two DN centroids' distances from the
            cerebellar midline (mm).
    """

    min_volume_mm3: float = 250.0
    max_volume_mm3: float = 2500.0
    max_volume_ratio: float = MAX_PAIR_VOLUME_RATIO
    min_lateral_mm: float = 5.0
    max_lateral_mm: float = 30.0
    position_y_range: tuple[float, float] = (0.30, 0.95)
    position_z_range: tuple[float, float] = (0.25, 0.90)
    min_mean_confidence: float = 0.80
    uncertain_probability: float = 0.70
    max_uncertain_fraction: float = 0.40
    max_pair_offset_mm: float = MAX_PAIR_OFFSET_MM  # post-processing's mirrored-partner limit (truth statistics there)
    max_lateral_asymmetry_mm: float = LATERAL_ASYMMETRY_MM

    def __post_init__(self) -> None:
        pairs = {"volume_mm3": (self.min_volume_mm3, self.max_volume_mm3),
                 "lateral_mm": (self.min_lateral_mm, self.max_lateral_mm),
                 "position_y_range": self.position_y_range, "position_z_range": self.position_z_range}
        for name, (low, high) in pairs.items():
            if not low < high:
                raise ValueError(f"QCThresholds {name}: lower bound {low} must be below upper bound {high}")
        if self.max_volume_ratio < 1.0:
            raise ValueError(f"QCThresholds max_volume_ratio must be >= 1, got {self.max_volume_ratio}")
        for name in ("min_mean_confidence", "uncertain_probability", "max_uncertain_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"QCThresholds {name} must be in [0, 1], got {getattr(self, name)}")


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel (mm^3) of a grid with this voxel-to-world affine."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def world_bounds(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """World (RAS mm) bounding box of a mask's voxels, voxel extent included: ``(min_xyz, max_xyz)``."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    linear = np.asarray(affine, dtype=float)[:3, :3]
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    lo_idx, hi_idx = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    points = lo_idx + corners * (hi_idx - lo_idx)  # 8 corners of the index box
    world = points @ linear.T + np.asarray(affine, dtype=float)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def dn_position_metrics(labels: np.ndarray, labels_affine: np.ndarray, cerebellum: np.ndarray,
                        cerebellum_affine: np.ndarray, midline_x_mm: float | None = None) -> dict[str, Any]:
    """Where each DN lies relative to the cerebellum (both maps may be on different grids; world RAS mm).

    Returns ``midline_x_mm`` (given, else the cerebellar mask centroid's world x), ``cerebellum_box_mm``
    (``{"min": [x, y, z], "max": [...]}``) and per side (``left`` / ``right``, None when empty):
    ``centroid_mm``, ``lateral_distance_mm`` (|x - midline|) and ``position_in_cerebellum`` (``{"x", "y", "z"}``:
    0 at the box's left / posterior / inferior edge, 1 at its right / anterior / superior edge).
    """
    bounds = world_bounds(cerebellum > 0, cerebellum_affine)
    if midline_x_mm is None:
        centre = world_centroid(cerebellum > 0, cerebellum_affine)
        midline_x_mm = None if centre is None else float(centre[0])
    out: dict[str, Any] = {
        "midline_x_mm": midline_x_mm,
        "cerebellum_box_mm": None if bounds is None else {"min": _rounded(bounds[0]), "max": _rounded(bounds[1])},
    }
    for value in (LEFT_DN, RIGHT_DN):
        side = SIDE_NAMES[value]
        centroid = world_centroid(labels == value, labels_affine)
        if centroid is None:
            out[side] = None
            continue
        entry: dict[str, Any] = {"centroid_mm": _rounded(centroid), "lateral_distance_mm": None,
                                 "position_in_cerebellum": None}
        if midline_x_mm is not None:
            entry["lateral_distance_mm"] = round(abs(float(centroid[0]) - midline_x_mm), 3)
        if bounds is not None:
            extent = np.maximum(bounds[1] - bounds[0], 1e-6)
            position = (centroid - bounds[0]) / extent
            entry["position_in_cerebellum"] = {axis: round(float(p), 4) for axis, p in zip(AXES, position,
                                                                                          strict=True)}
        out[side] = entry
    return out


def pair_symmetry(position: dict[str, Any]) -> dict[str, float | None] | None:
    """How far the two DN centroids are from mirroring each other (from :func:`dn_position_metrics`): ``dy_mm``,
    ``dz_mm`` (|difference| in world y and z) and ``lateral_asymmetry_mm`` (|difference| of the distances from the
    midline; None without a midline); None when a side is empty."""
    left, right = position.get("left"), position.get("right")
    if left is None or right is None:
        return None
    (_, ly, lz), (_, ry, rz) = left["centroid_mm"], right["centroid_mm"]
    lateral = None
    if left["lateral_distance_mm"] is not None and right["lateral_distance_mm"] is not None:
        lateral = round(abs(left["lateral_distance_mm"] - right["lateral_distance_mm"]), 3)
    return {"dy_mm": round(abs(ly - ry), 3), "dz_mm": round(abs(lz - rz), 3), "lateral_asymmetry_mm": lateral}


def confidence_metrics(labels: np.ndarray, confidence: np.ndarray | None, uncertain_probability: float = 0.7,
                       measure: str | None = None) -> dict[str, Any] | None:
    """Per side (and ``all`` DN voxels): ``mean`` confidence and ``uncertain_fraction`` (voxels whose confidence is
    below ``uncertain_probability``), plus the ``measure`` name; None without a confidence map, a side's entry
    None when it is empty."""
    if confidence is None:
        return None
    confidence = np.asarray(confidence)
    if confidence.shape != labels.shape:
        raise ValueError(f"confidence map has shape {confidence.shape}, the labels {labels.shape}")
    out: dict[str, Any] = {"measure": measure}
    for name, mask in (*((SIDE_NAMES[v], labels == v) for v in DN_SIDES), ("all", labels > 0)):
        values = confidence[mask]
        out[name] = None if values.size == 0 else {
            "mean": round(float(values.mean()), 4),
            "uncertain_fraction": round(float(np.mean(values < uncertain_probability)), 4),
        }
    return out


def quality_check(labels: np.ndarray, labels_affine: np.ndarray, cerebellum: np.ndarray,
                  cerebellum_affine: np.ndarray, confidence: np.ndarray | None = None, *,
                  midline_x_mm: float | None = None, thresholds: QCThresholds | None = None,
                  confidence_measure: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """Run every plausibility check on a post-processed DN label map.

    Args:
        labels: DN labels (0 / 1 = left / 2 = right in world RAS) on the grid of ``labels_affine`` (e.g. the crop).
        labels_affine: voxel-to-world matrix of ``labels``.
        cerebellum: cerebellar mask (localizer output) on the grid of ``cerebellum_affine`` (e.g. the input).
        cerebellum_affine: voxel-to-world matrix of ``cerebellum``.
        confidence: per-voxel segmenter confidence in [0, 1] on ``labels``' grid, or None when the model does not
            expose probabilities (no confidence check, ``confidence`` recorded as None).
        midline_x_mm: world x of the cerebellar midline used by post-processing (default: mask centroid).
        thresholds: plausible ranges (default :class:`QCThresholds`).
        confidence_measure: what ``confidence`` is (``dn_vs_background`` or ``max_class``), recorded only.

    Returns:
        ``(flags, metrics)``: flag strings as documented in the module docstring, and a JSON-friendly dict with
        ``volume_mm3`` (per side), ``volume_ratio``, the :func:`dn_position_metrics` entries, ``confidence``
        (:func:`confidence_metrics`), ``confidence_checked``, ``qc_status`` and the ``thresholds`` used.
    """
    thresholds = thresholds or QCThresholds()
    labels = np.asarray(labels)
    flags: list[str] = []
    voxel = voxel_volume_mm3(labels_affine)
    volumes = {SIDE_NAMES[v]: float(np.count_nonzero(labels == v)) * voxel for v in (LEFT_DN, RIGHT_DN)}
    for side, volume in volumes.items():
        if volume > 0 and not thresholds.min_volume_mm3 <= volume <= thresholds.max_volume_mm3:
            flags.append(f"{side}_dn_volume_implausible:{volume:.0f}mm3")
    ratio = None
    if min(volumes.values()) > 0:
        ratio = max(volumes.values()) / min(volumes.values())
        if ratio > thresholds.max_volume_ratio:
            flags.append(f"dn_volume_ratio_implausible:{ratio:.2f}")

    position = dn_position_metrics(labels, labels_affine, cerebellum, cerebellum_affine, midline_x_mm)
    ranges = {"y": thresholds.position_y_range, "z": thresholds.position_z_range}
    for side in (SIDE_NAMES[v] for v in DN_SIDES):
        entry = position[side]
        if entry is None:
            continue
        distance = entry["lateral_distance_mm"]
        if distance is not None and not thresholds.min_lateral_mm <= distance <= thresholds.max_lateral_mm:
            flags.append(f"{side}_dn_lateral_offset_implausible:{distance:.1f}mm")
        normalized = entry["position_in_cerebellum"]
        if normalized is None:
            continue
        outside = [axis for axis in AXES if not 0.0 <= normalized[axis] <= 1.0]
        if outside:
            flags.append(f"{side}_dn_outside_cerebellum_box:{','.join(outside)}")
            continue
        off = [f"{axis}={normalized[axis]:.2f}" for axis, (low, high) in ranges.items()
               if not low <= normalized[axis] <= high]
        if off:
            flags.append(f"{side}_dn_position_implausible:{','.join(off)}")

    pair = pair_symmetry(position)
    if pair is not None:
        off = [f"{name}={value:.1f}mm" for name, value, limit in (
            ("dy", pair["dy_mm"], thresholds.max_pair_offset_mm), ("dz", pair["dz_mm"], thresholds.max_pair_offset_mm),
            ("lateral", pair["lateral_asymmetry_mm"], thresholds.max_lateral_asymmetry_mm))
            if value is not None and value > limit]
        if off:
            flags.append(f"dn_pair_asymmetric:{','.join(off)}")

    summary = confidence_metrics(labels, confidence, thresholds.uncertain_probability, confidence_measure)
    if summary is not None:
        for side in (SIDE_NAMES[v] for v in DN_SIDES):
            entry = summary[side]
            if entry is None:
                continue
            if (entry["mean"] < thresholds.min_mean_confidence
                    or entry["uncertain_fraction"] > thresholds.max_uncertain_fraction):
                flags.append(f"{side}_dn_low_confidence:mean={entry['mean']:.2f},"
                             f"uncertain={entry['uncertain_fraction']:.2f}")

    metrics: dict[str, Any] = {
        "volume_mm3": {side: round(v, 3) for side, v in volumes.items()},
        "volume_ratio": None if ratio is None else round(ratio, 4),
        **position,
        "pair_symmetry": pair,
        "confidence": summary,
        "confidence_checked": summary is not None,
        "flags": list(flags),
        "thresholds": asdict(thresholds),
    }
    return flags, metrics


def qc_status(flags: list[str], confidence_checked: bool, failed: bool = False) -> str:
    """One word for ``volumes.csv``: ``failed`` (no segmentation), ``flagged`` (any flag of the result, QC or
    pipeline), ``pass`` (every check ran and passed) or ``pass_without_confidence`` (passed, but the model gives
    no probabilities so the confidence check could not run)."""
    if failed:
        return QC_FAILED
    if flags:
        return QC_FLAGGED
    return QC_PASS if confidence_checked else QC_PASS_NO_CONFIDENCE


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values]
