"""What inference needs from a trained stage model, and how it loads one from a run directory.

The training sub-package owns the concrete class (``dentate_research.training.artifacts.StageModel``); this
module only states the protocol the two-step pipeline relies on, so that inference can be read and tested
without knowing how a model was trained (MONAI network, nnU-Net, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dentate_research.data.io import DataError, Volume

STAGES = ("localization", "segmentation")


@runtime_checkable
class StageModel(Protocol):
    """A trained stage: ``predict`` returns integer labels on the input volume's own grid.

    Localization models return a binary mask (1 = target, e.g. cerebellum); segmentation models return
    0 / 1 = left DN / 2 = right DN in world RAS. Resampling, normalization, sliding-window inference and
    test-time augmentation happen inside ``predict``. ``card`` is the ModelCard (stage, arch, spacing, ...).
    Optional: ``predict_probabilities(volume) -> (probs (C, X, Y, Z), grid Volume)`` on the network grid; when
    present the pipeline localizes on the coarse grid (see ``DentatePredictor._localize``).
    Optional: ``predict_with_confidence(volume) -> (labels, max_probability)``, both on the input grid, the second
    the per-voxel maximum over classes of the softmax probabilities; when a segmenter has it the pipeline checks
    its confidence inside the predicted DN (:mod:`dentate_research.inference.qc`), otherwise confidence is recorded
    as None and not checked. If the method also accepts ``merge_foreground=True`` (the training package's
    StageModel does) the pipeline asks for DN-vs-background confidence (left and right merged), because sides are
    re-assigned from world x anyway.
    """

    card: Any

    def predict(self, volume: Volume) -> np.ndarray: ...


def card_value(card: Any, name: str, default: Any = None) -> Any:
    """Read a ModelCard field whether the card is a dataclass-like object or a plain dict."""
    if isinstance(card, dict):
        return card.get(name, default)
    return getattr(card, name, default)


def card_to_dict(card: Any) -> dict[str, Any]:
    """JSON-friendly view of a ModelCard (for the metadata report)."""
    if isinstance(card, dict):
        return dict(card)
    for method in ("to_dict", "as_dict"):
        if hasattr(card, method):
            return dict(getattr(card, method)())
    from dataclasses import asdict, is_dataclass

    if is_dataclass(card) and not isinstance(card, type):
        return asdict(card)
    return {"repr": repr(card)}


def load_stage(run_dir: Path | str, stage: str, device: str = "cpu") -> StageModel:
    """Load a trained stage model from its run directory and check it is the expected stage.

    Raises:
        DataError: the folder does not exist, holds no ``model.json``, or is a model of another stage.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: {stage} model folder not found")
    if not (run_dir / "model.json").is_file():
        raise DataError(f"{run_dir}: not a trained run directory (no model.json); expected the output folder "
                        f"of 'python -m dentate_research train stage={stage} ...'")
    from dentate_research.training.artifacts import load_stage_model

    model = load_stage_model(run_dir, device=device)
    found = card_value(model.card, "stage")
    if found != stage:
        raise DataError(f"{run_dir}: is a '{found}' model, but a '{stage}' model is needed here")
    return model
