"""Per-case intensity normalization of QSM: the same function for training samples and for a trained stage at
inference (:class:`~dentate_research.runtime.stage_model.NetworkStageModel`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..schema import NormalizationScheme

NORMALIZATION_SCHEMES = NormalizationScheme.words()


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
