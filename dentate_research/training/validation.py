"""Validation metrics per stage, identical for every architecture.

Segmentation: the network's labels go through the inference pipeline's post-processing
(:func:`dentate_research.data.postprocess.postprocess_dn_labels`: sides per connected component from world geometry,
the sample's cerebellar midline placing a lone nucleus; one component per side), then Dice per side (label 1 =
left DN, 2 = right DN) on the stage grid; both-empty = 1.0 (:func:`dentate_research.data.overlap.dice` with
``empty="one"``), one empty = 0.
This holds for both label schemes (lateral 0/1/2, merged 0/1).
Localization: Dice of the cerebellum mask, and what matters downstream - the bounding box derived from the
predicted mask (plus ``margin_mm``) mapped to the native grid: ``bbox_recall`` = fraction of cases whose box
contains the whole DN, ``dn_voxel_recall`` = mean fraction of DN voxels inside the box, and the crop size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..data.geometry import bbox_from_mask, box_extent_mm, map_bbox
from ..data.laterality import LEFT_DN, RIGHT_DN
from ..data.overlap import dice
from ..data.postprocess import postprocess_dn_labels
from ..schema import CropSettings
from .preprocessing import StageSample


def segmentation_metrics(predictions: Sequence[np.ndarray], samples: Sequence[StageSample]) -> dict[str, object]:
    """Mean Dice per side over cases, plus the per-case values."""
    per_case = {}
    for pred, s in zip(predictions, samples, strict=True):
        per_case[s.case_id] = {"left": dice(pred == LEFT_DN, s.label == LEFT_DN, empty="one"),
                               "right": dice(pred == RIGHT_DN, s.label == RIGHT_DN, empty="one")}
    left = [v["left"] for v in per_case.values()]
    right = [v["right"] for v in per_case.values()]
    return {"val_dice_left": float(np.mean(left)), "val_dice_right": float(np.mean(right)),
            "val_dice_mean": float(np.mean(left + right)), "val_dice_left_sd": float(np.std(left)),
            "val_dice_right_sd": float(np.std(right)), "per_case": per_case}


def localization_metrics(predictions: Sequence[np.ndarray], samples: Sequence[StageSample],
                         margin_mm: float) -> dict[str, object]:
    """Cerebellum Dice and DN bounding-box recall / crop size (native grid) for predicted coarse masks."""
    per_case = {}
    for pred, s in zip(predictions, samples, strict=True):
        entry: dict[str, object] = {"dice_cerebellum": dice(pred > 0, s.label > 0, empty="one")}
        box = bbox_from_mask(pred > 0, s.affine, margin_mm)
        if s.dn_native is None:
            raise ValueError(f"case {s.case_id}: localization sample has no native DN labels for bbox recall")
        dn = s.dn_native.array > 0
        if box is None:  # nothing found: the DN is certainly not contained
            entry.update({"bbox_contains_dn": False, "dn_voxel_recall": 0.0, "crop_size_mm": [0.0, 0.0, 0.0],
                          "crop_voxels": 0})
        else:
            native = map_bbox(box, s.affine, s.dn_native)
            inside = int(dn[native.slices].sum())
            total = int(dn.sum())
            entry.update({"bbox_contains_dn": bool(inside == total),
                          "dn_voxel_recall": inside / total if total else 1.0,
                          "crop_size_mm": list(box_extent_mm(native, s.dn_native.affine)),
                          "crop_voxels": int(np.prod(native.size))})
        per_case[s.case_id] = entry
    vals = list(per_case.values())
    sizes = np.asarray([v["crop_size_mm"] for v in vals], dtype=float)
    return {"val_dice_cerebellum": float(np.mean([v["dice_cerebellum"] for v in vals])),
            "val_bbox_recall": float(np.mean([v["bbox_contains_dn"] for v in vals])),
            "val_dn_voxel_recall": float(np.mean([v["dn_voxel_recall"] for v in vals])),
            "val_crop_size_mm_x": float(sizes[:, 0].mean()), "val_crop_size_mm_y": float(sizes[:, 1].mean()),
            "val_crop_size_mm_z": float(sizes[:, 2].mean()),
            "val_crop_voxels": float(np.mean([v["crop_voxels"] for v in vals])), "per_case": per_case}


def postprocess_like_inference(labels: np.ndarray, sample: StageSample) -> np.ndarray:
    """The pipeline's DN post-processing of a crop's network labels (0/1 merged or 0/1/2 lateral)."""
    cleaned, _ = postprocess_dn_labels(np.asarray(labels, dtype=np.uint8), sample.affine, sample.midline_x_mm)
    return cleaned


def stage_metrics(stage: str, predict: Callable[[StageSample], np.ndarray], samples: Sequence[StageSample],
                  margin_mm: float = CropSettings.margin_mm) -> dict[str, object]:
    """Predict every sample with ``predict`` (labels on the sample grid) and compute the stage's metrics."""
    predictions = [predict(s) for s in samples]
    if stage == "segmentation":
        predictions = [np.zeros_like(s.label) if s.extras.get("localizer_failed") else postprocess_like_inference(p, s)
                       for p, s in zip(predictions, samples, strict=True)]  # a localizer miss fails at inference
        return segmentation_metrics(predictions, samples)
    return localization_metrics(predictions, samples, margin_mm)


def selection_score(stage: str, metrics: dict[str, object]) -> float:
    """The number used to pick the best checkpoint: mean DN Dice, or cerebellum Dice + bbox recall."""
    if stage == "segmentation":
        return float(metrics["val_dice_mean"])  # type: ignore[arg-type]
    return float(metrics["val_dice_cerebellum"]) + float(metrics["val_bbox_recall"])  # type: ignore[arg-type]


class PlateauTracker:
    """Early stopping on the validation plateau, as Keras and Lightning define it.

    A validation counts as progress when its selection score beats the score of the last validation that counted as
    progress by more than ``min_delta`` (the first always counts); the run has plateaued after ``patience``
    validations in a row without progress. The reference does NOT follow every small gain: a curve that rises by
    less than ``min_delta`` per validation but more than ``min_delta`` over a few of them is still progressing.
    """

    def __init__(self, min_delta: float, reference: float = -float("inf"), since_progress: int = 0) -> None:
        self.min_delta = float(min_delta)
        self.reference = float(reference)
        self.since_progress = int(since_progress)

    def update(self, score: float) -> bool:
        """Record one validation score; True when it counted as progress."""
        progress = self.reference == -float("inf") or score > self.reference + self.min_delta
        if progress:
            self.reference, self.since_progress = float(score), 0
        else:
            self.since_progress += 1
        return progress

    def plateaued(self, patience: int | None) -> bool:
        """True after ``patience`` validations without progress (never when ``patience`` is None)."""
        return patience is not None and self.since_progress >= int(patience)
