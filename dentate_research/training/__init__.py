"""Training of the two stages (localization, segmentation) for every registered architecture.

Entry point without Hydra: :func:`train_stage` (``cfg`` -> run directory). The trained-model contract:
:class:`ModelCard`, :class:`StageModel`, :func:`load_stage_model` (see :mod:`.artifacts`). Heavy modules
(torch, MONAI, nnU-Net) are imported lazily so that ``import dentate_research.training`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModelCard", "StageModel", "load_stage_model", "train_stage"]


def __getattr__(name: str) -> Any:
    if name == "train_stage":
        from .api import train_stage

        return train_stage
    if name in ("ModelCard", "StageModel", "load_stage_model"):
        from . import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
