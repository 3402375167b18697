"""The one Dice coefficient of the project, with an explicit policy for two empty masks.

Lives in ``data`` so that training (validation) and evaluation share it without evaluation being imported by
training. Policies for ``pred`` and ``ref`` both empty:

- ``"nan"``: evaluation (:mod:`dentate_research.evaluation.metrics`). A DN absent from the reference is a
  missing or failed tracing, not a true negative; NaN rows are excluded from means and counted separately.
- ``"one"``: training validation (:mod:`dentate_research.training.validation`). Agreeing that nothing is there
  is a perfect score, so a validation mean stays defined.

One mask empty and the other not is always 0.0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

EmptyPolicy = Literal["nan", "one"]
EMPTY_POLICIES: tuple[EmptyPolicy, ...] = ("nan", "one")


def dice(pred: np.ndarray, ref: np.ndarray, empty: EmptyPolicy = "nan") -> float:
    """Dice coefficient 2|P∩R| / (|P|+|R|) of two masks (any dtype, nonzero = inside; same shape).

    ``empty``: what two empty masks score, ``"nan"`` (default) or ``"one"`` (1.0)."""
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"dice: empty policy '{empty}' unknown; allowed: {list(EMPTY_POLICIES)}")
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return float("nan") if empty == "nan" else 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total
