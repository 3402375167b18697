"""The ``monai`` training backend: our torch loop (:func:`dentate_research.training.monai_loop.train_monai`); the
trained stage loads as :class:`dentate_research.runtime.monai_model.MonaiStageModel`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from ...model_contract import ModelCard
from ...runtime.stage_model import NetworkStageModel
from ..loggers import RunLogger
from .base import TrainingJob


class MonaiBackend:
    """:class:`~.base.TrainingBackend` of the MONAI architectures (U-Net, SegResNet, UNETR, ...)."""

    framework = "monai"
    supports_fine_tuning = True
    stops_early = True

    def check_config(self, cfg: DictConfig) -> None:
        """Every trainer setting is supported (CPU or CUDA, one or several processes)."""
        return None

    def train(self, job: TrainingJob, card: ModelCard, logger: RunLogger | None) -> dict[str, Any]:
        """:func:`~dentate_research.training.monai_loop.train_monai`; the card keeps its default checkpoint
        (``checkpoints/best.pt``)."""
        from ..monai_loop import train_monai

        return train_monai(job, logger)

    def count_parameters(self, model: NetworkStageModel) -> int:
        from ...models import count_parameters

        return count_parameters(model.network)  # type: ignore[attr-defined]
