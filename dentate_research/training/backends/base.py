"""The training-backend protocol and the job a backend trains (:class:`TrainingJob`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ...data.labels import LabelScheme, network_label_scheme
from ...schema import AugmentationSettings, TrainerSettings

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ...model_contract import ModelCard
    from ...runtime.inferer import InfererSettings
    from ...runtime.stage_model import NetworkStageModel
    from ..distributed import DistContext
    from ..loggers import RunLogger
    from ..preprocessing import StageSample


@dataclass
class TrainingJob:
    """One stage to train, prepared by :func:`dentate_research.training.api.train_stage` (identical for every
    backend).

    Attributes:
        run_dir: the claimed run folder (rank 0 writes into it).
        stage: ``localization`` | ``segmentation``; ``arch``/``arch_kwargs``: registry name and its settings.
        classes: class names by label value (their meaning: :attr:`scheme`).
        train_samples / val_samples: prepared stage samples (stage grid, crops, labels of the configured rater).
        patch_size: training patch = sliding window (voxels).
        trainer / augmentation: the run's typed settings (:class:`~dentate_research.schema.TrainerSettings`,
            :class:`~dentate_research.schema.AugmentationSettings`: budget, optimisation, randomization), the
            same objects for every backend.
        inferer: validation sliding-window settings; ``postprocess``: largest component per class.
        margin_mm: localization bounding-box margin for validation (mm).
        device / seed / dist: torch device, seed, process group (rank 0 = ``dist.is_main``).
    """

    run_dir: Path
    stage: str
    arch: str
    arch_kwargs: dict[str, Any]
    classes: list[str]
    train_samples: list[StageSample]
    val_samples: list[StageSample]
    patch_size: list[int]
    trainer: TrainerSettings
    augmentation: AugmentationSettings
    inferer: InfererSettings
    postprocess: bool
    margin_mm: float
    device: torch.device
    seed: int
    dist: DistContext

    @property
    def scheme(self) -> LabelScheme:
        """What the classes mean (lateral, merged or cerebellum; :func:`~dentate_research.data.labels.
        network_label_scheme`)."""
        return network_label_scheme(self.stage, self.classes)


@runtime_checkable
class TrainingBackend(Protocol):
    """How one framework trains, loads and measures a stage network.

    Attributes:
        framework: the registry's framework name (``ArchSpec.framework``, ``ModelCard.framework``).
        supports_fine_tuning: ``init_from`` (start from a trained model's weights) is available.
        stops_early: ``trainer.patience`` and ``trainer.max_minutes`` can end training before ``epochs x
            iterations_per_epoch`` (False: that budget is the whole story).
    """

    framework: str
    supports_fine_tuning: bool
    stops_early: bool

    def check_config(self, cfg: DictConfig) -> None:
        """Reject settings this framework cannot run (DataError naming the key), before any process group or data."""
        ...

    def train(self, job: TrainingJob, card: ModelCard, logger: RunLogger | None) -> dict[str, Any]:
        """Train ``job`` into ``job.run_dir`` (checkpoints, metrics rows through ``logger``; None off rank 0).

        Completes ``card`` with what only training knows (checkpoint path, framework bookkeeping); returns the loop
        result: best validation metrics (if any), ``stop_reason``, ``epochs_run``, ``iterations_run``,
        ``distributed``."""
        ...

    def count_parameters(self, model: NetworkStageModel) -> int:
        """Trainable parameters of a loaded stage model's network."""
        ...
