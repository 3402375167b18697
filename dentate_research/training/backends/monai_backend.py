"""The ``monai`` training backend: our torch loop (:func:`dentate_research.training.monai_loop.train_monai`) and
:class:`MonaiStageModel` (the network with our sliding-window inferer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ...data.io import DataError, Volume
from ...model_contract import ModelCard
from ..artifacts import NetworkStageModel
from ..inferer import predict_probabilities
from ..loggers import RunLogger
from ..preprocessing import normalize_intensity
from .base import TrainingJob


class MonaiStageModel(NetworkStageModel):
    """Stage model backed by a MONAI network and our sliding-window inferer."""

    def __init__(self, card: ModelCard, run_dir: Path, device: torch.device, checkpoint: str | None = None):
        super().__init__(card, run_dir, device)
        from ...models import build_network

        self.network = build_network(card.arch, card.in_channels, len(card.classes), card.patch_size,
                                     card.arch_kwargs)
        ckpt_path = self.run_dir / (checkpoint or card.checkpoint)
        if not ckpt_path.exists():
            raise DataError(f"{ckpt_path}: checkpoint not found in run directory {self.run_dir}")
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        self.network.load_state_dict(state.get("model", state))
        self.network.to(device).eval()

    def predict_probabilities(self, volume: Volume) -> tuple[np.ndarray, Volume]:
        grid = self._to_network_grid(volume)
        image = normalize_intensity(grid.array, **self.card.normalization)
        probs = predict_probabilities(self.network, image, self.settings, self.device, lr_axis=0,
                                      lateralized=self.lateralized)
        return probs, grid


class MonaiBackend:
    """:class:`~.base.TrainingBackend` of the MONAI architectures (U-Net, SegResNet, UNETR, ...)."""

    framework = "monai"
    supports_fine_tuning = True

    def check_config(self, cfg: DictConfig) -> None:
        """Every trainer setting is supported (CPU or CUDA, one or several processes)."""
        return None

    def train(self, job: TrainingJob, card: ModelCard, logger: RunLogger | None) -> dict[str, Any]:
        """:func:`~dentate_research.training.monai_loop.train_monai`; the card keeps its default checkpoint
        (``checkpoints/best.pt``)."""
        from ..augmentation import AugmentationSettings
        from ..monai_loop import train_monai

        return train_monai(run_dir=job.run_dir, stage=job.stage, arch=job.arch, arch_kwargs=dict(job.arch_kwargs),
                           classes=job.classes, train_samples=job.train_samples, val_samples=job.val_samples,
                           patch_size=job.patch_size, loop=job.loop,
                           augmentation=AugmentationSettings.from_dict(job.augmentation), inferer=job.inferer,
                           postprocess=job.postprocess, margin_mm=job.margin_mm, device=job.device, logger=logger,
                           seed=job.seed, dist=job.dist)

    def load(self, run_dir: Path, card: ModelCard, device: torch.device,
             checkpoint: str | None = None) -> MonaiStageModel:
        return MonaiStageModel(card, run_dir, device, checkpoint)

    def model_files(self, card: dict[str, Any]) -> list[str]:
        return [str(card["checkpoint"])]

    def count_parameters(self, model: NetworkStageModel) -> int:
        from ...models import count_parameters

        return count_parameters(model.network)  # type: ignore[attr-defined]
