"""The ``nnunet`` training backend: nnU-Net v2's own planning, preprocessing and trainer
(:func:`dentate_research.training.nnunet_runner.train_nnunet`); the trained stage loads as
:class:`dentate_research.runtime.nnunet_model.NnUNetStageModel` (nnU-Net's predictor with our TTA policy)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from omegaconf import DictConfig

from ...data.io import DataError
from ...data.labels import MERGED, merge_dn_labels
from ...model_contract import ModelCard
from ...runtime.device import amp_usable
from ...runtime.stage_model import NetworkStageModel
from ..loggers import RunLogger
from ..preprocessing import StageSample
from .base import TrainingJob

# nnU-Net's epoch log (history key) -> our metrics column
_HISTORY_COLUMNS = (("val_losses", "nnunet_val_loss"), ("mean_fg_dice", "nnunet_pseudo_dice"), ("lrs", "lr"),
                    ("wall_time_s", "wall_time_s"))


def _merged_sample(sample: StageSample) -> StageSample:
    """A copy of a segmentation sample whose DN labels 1/2 are one class (label 1; the ``merged`` scheme)."""
    return replace(sample, label=merge_dn_labels(sample.label))


def _cuda_requested(device_name: str) -> bool:
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


class NnUNetBackend:
    """:class:`~.base.TrainingBackend` of ``arch=nnunet`` (nnU-Net v2 trains and predicts itself)."""

    framework = "nnunet"
    supports_fine_tuning = False  # nnU-Net users: nnUNetv2_train -pretrained_weights
    stops_early = False  # nnU-Net's trainer runs its epochs; patience/max_minutes unused

    def check_config(self, cfg: DictConfig) -> None:
        """Several processes need CUDA: nnU-Net's own multi-GPU training (DDP) asserts it."""
        devices = int(cfg.trainer.devices)
        if devices > 1 and not _cuda_requested(str(cfg.trainer.device)):
            raise DataError(f"trainer.devices={devices} with arch=nnunet: nnU-Net's own multi-GPU training (DDP) is "
                            "CUDA-only (nnU-Net asserts it); use trainer.device=cuda on GPUs, or trainer.devices=1 "
                            "on a CPU")

    def train(self, job: TrainingJob, card: ModelCard, logger: RunLogger | None) -> dict[str, Any]:
        """:func:`~dentate_research.training.nnunet_runner.train_nnunet` with the shared samples and budget.

        Left-right augmentation as in the MONAI loop: lateral labels get the mirror that swaps labels 1/2 (with
        ``augmentation.lr_flip=swap_labels``), the merged scheme trains one DN class and lets nnU-Net mirror the
        left-right axis too. nnU-Net's epoch log goes to ``logger`` (rank 0); the card gets the ``nnunet`` section,
        the best checkpoint and nnU-Net's patch size and spacing."""
        from ..nnunet_runner import train_nnunet

        aug, loop, dist, scheme = job.augmentation, job.trainer, job.dist, job.scheme
        mirroring = aug.enabled and aug.nnunet_mirroring
        swaps = aug.enabled and aug.lr_flip == "swap_labels" and scheme.lateralized
        lr_swap = float(aug.lr_flip_prob) if swaps else 0.0
        merged = scheme == MERGED
        train_samples, val_samples = job.train_samples, job.val_samples
        if merged:  # nnU-Net learns one DN class
            train_samples = [_merged_sample(s) for s in train_samples]
            val_samples = [_merged_sample(s) for s in val_samples]
        cpu_bf16 = job.device.type == "cpu" and amp_usable(loop.amp, job.device, "nnU-Net")
        nn = train_nnunet(job.run_dir, train_samples, val_samples, job.classes, patch_size=job.patch_size,
                          batch_size=loop.batch_size, epochs=loop.epochs,
                          iterations_per_epoch=loop.iterations_per_epoch,
                          val_iterations=int(loop.val_iterations), arch_kwargs=dict(job.arch_kwargs),
                          device=job.device, seed=job.seed, initial_lr=loop.optimizer.lr, allow_mirroring=mirroring,
                          lr_swap_probability=lr_swap, mirror_lr_axis=merged, resume=loop.resume, dist=dist,
                          cpu_bf16=cpu_bf16)
        history = nn.pop("history")
        if logger is not None:  # rank 0 logs
            _log_history(logger, history, loop.iterations_per_epoch)
        card.nnunet = nn
        card.checkpoint = nn["checkpoints"]["best"]
        card.arch_kwargs = {**dict(job.arch_kwargs), "patch_size_nnunet": nn["patch_size_nnunet"],
                            "spacing_nnunet": nn["spacing_nnunet"]}
        return {"distributed": {**dist.describe(), "nnunet_ddp": dist.distributed, "global_batch": loop.batch_size}}

    def count_parameters(self, model: NetworkStageModel) -> int:
        from ...models import count_parameters

        return count_parameters(model.predictor.network)  # type: ignore[attr-defined]


def _log_history(logger: RunLogger, history: dict[str, list[float]], iterations_per_epoch: int) -> None:
    """One metrics row per nnU-Net epoch: train loss, nnU-Net's validation loss and pseudo Dice, lr, wall time (s)."""
    for e, loss in enumerate(history["train_losses"]):
        row: dict[str, Any] = {"epoch": e + 1, "iteration": (e + 1) * iterations_per_epoch, "train_loss": loss}
        for key, name in _HISTORY_COLUMNS:
            if e < len(history.get(key, [])):
                row[name] = history[key][e]
        logger.log(row)
