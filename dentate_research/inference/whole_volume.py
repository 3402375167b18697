"""One-step (whole-volume) DN segmentation: the segmentation stage slid over the whole head, no localizer.

The comparison method of the two-step pipeline (T4 of the studies, ``benchmarks/bench_two_step.py``): the same
segmentation :class:`~dentate_research.model_contract.StageModel` (sliding window, blending, TTA) and the same
post-processing as :class:`~dentate_research.inference.DentatePredictor` (largest component per side, sides from
world x), but over the whole volume. Without a localizer there is no cerebellar mask, so the midline that assigns
the sides is the centre of the head (centroid of the non-zero voxels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dentate_research.data.io import Volume
from dentate_research.data.labels import MERGED
from dentate_research.data.laterality import midline_x
from dentate_research.data.postprocess import PostprocessReport, postprocess_dn_labels
from dentate_research.model_contract import StageModel, card_label_scheme


@dataclass
class WholeVolumeResult:
    """Labels (uint8 0 / 1 = left DN / 2 = right DN on the input grid), post-processing report, flags
    (``<side>_dn_empty``) and timings in seconds (``segmentation``, ``postprocess``)."""

    labels: np.ndarray
    postprocess: PostprocessReport
    flags: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


def predict_whole_volume(segmenter: StageModel, volume: Volume) -> WholeVolumeResult:
    """Segment the DN of a canonical-RAS ``volume`` with ``segmenter`` over the whole volume (see module
    docstring); a segmenter with one merged DN class (``classes`` of length 2) gets its sides from world x only."""
    t0 = time.perf_counter()
    raw = segmenter.predict(volume)
    t_segmentation = time.perf_counter() - t0
    t0 = time.perf_counter()
    midline = midline_x(volume.array != 0, volume.affine)  # no localizer: the head centre
    merged = card_label_scheme(segmenter.card) == MERGED
    labels, report = postprocess_dn_labels(raw, volume.affine, midline, merged=merged)
    return WholeVolumeResult(labels, report, [f"{side}_dn_empty" for side in report.empty_sides],
                             {"segmentation": t_segmentation, "postprocess": time.perf_counter() - t0})
