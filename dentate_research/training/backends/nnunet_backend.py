"""The ``nnunet`` training backend: nnU-Net v2's own planning, preprocessing and trainer
(:func:`dentate_research.training.nnunet_runner.train_nnunet`) and :class:`NnUNetStageModel` (nnU-Net's predictor
with our TTA policy)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ...data.io import DataError, Volume
from ...data.labels import MERGED, merge_dn_labels
from ...model_contract import ModelCard
from ..artifacts import NetworkStageModel
from ..inferer import tta_average
from ..loggers import RunLogger
from ..preprocessing import StageSample
from .base import TrainingJob

# nnU-Net's epoch log (history key) -> our metrics column
_HISTORY_COLUMNS = (("val_losses", "nnunet_val_loss"), ("mean_fg_dice", "nnunet_pseudo_dice"), ("lrs", "lr"),
                    ("wall_time_s", "wall_time_s"))


class NnUNetStageModel(NetworkStageModel):
    """Stage model backed by nnU-Net's own predictor (nnUNetPredictor.manual_initialization).

    nnU-Net reads NIfTI with SimpleITK, so its arrays are (z, y, x) = our canonical RAS arrays transposed; the
    left-right axis is nnU-Net's LAST axis. nnU-Net's own mirroring is off; the card's TTA policy runs here, through
    the same :func:`~dentate_research.training.inferer.tta_average` as the MONAI inferer (flips on our RAS axes,
    left/right channel swap); nnU-Net does its own resampling and z-score.
    """

    def __init__(self, card: ModelCard, run_dir: Path, device: torch.device, checkpoint: str | None = None):
        super().__init__(card, run_dir, device)
        from ..nnunet_runner import build_nnunet_predictor

        if card.nnunet is None:
            raise DataError(f"{run_dir}/model.json: framework nnunet but no 'nnunet' section")
        self.predictor = build_nnunet_predictor(self.run_dir, card, device, checkpoint)

    def _predict_once(self, array: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
        zyx = np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32)[None]
        spacing_zyx = [float(s) for s in spacing_xyz[::-1]]
        _, probs = self.predictor.predict_single_npy_array(zyx, {"spacing": spacing_zyx}, None, None, True)
        return np.asarray(probs, dtype=np.float32).transpose(0, 3, 2, 1)  # (C, z, y, x) -> (C, x, y, z)

    def predict_probabilities(self, volume: Volume) -> tuple[np.ndarray, Volume]:
        def predict_flipped(flip: tuple[int, ...]) -> np.ndarray:  # (C, X, Y, Z) of the flipped volume
            return self._predict_once(np.flip(volume.array, flip) if flip else volume.array, volume.spacing)

        total = tta_average(predict_flipped, self.settings.tta, 0, self.lateralized, channel_axis=0)
        return np.ascontiguousarray(total), volume


def _merged_sample(sample: StageSample) -> StageSample:
    """A copy of a segmentation sample whose DN labels 1/2 are one class (label 1; the ``merged`` scheme)."""
    return replace(sample, label=merge_dn_labels(sample.label))


def _cuda_requested(device_name: str) -> bool:
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


class NnUNetBackend:
    """:class:`~.base.TrainingBackend` of ``arch=nnunet`` (nnU-Net v2 trains and predicts itself)."""

    framework = "nnunet"
    supports_fine_tuning = False  # nnU-Net users: nnUNetv2_train -pretrained_weights

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

        aug, loop, dist, scheme = job.augmentation, job.loop, job.dist, job.scheme
        mirroring = bool(aug["enabled"]) and bool(aug["nnunet_mirroring"])
        lr_swap = (float(aug["lr_flip_prob"]) if aug["enabled"] and aug["lr_flip"] == "swap_labels"
                   and scheme.lateralized else 0.0)
        merged = scheme == MERGED
        train_samples, val_samples = job.train_samples, job.val_samples
        if merged:  # nnU-Net learns one DN class
            train_samples = [_merged_sample(s) for s in train_samples]
            val_samples = [_merged_sample(s) for s in val_samples]
        nn = train_nnunet(job.run_dir, train_samples, val_samples, job.classes, patch_size=job.patch_size,
                          batch_size=loop.batch_size, epochs=loop.epochs,
                          iterations_per_epoch=loop.iterations_per_epoch,
                          val_iterations=int(job.trainer["val_iterations"]), arch_kwargs=dict(job.arch_kwargs),
                          device=job.device, seed=job.seed, initial_lr=loop.lr, allow_mirroring=mirroring,
                          lr_swap_probability=lr_swap, mirror_lr_axis=merged, resume=loop.resume, dist=dist)
        history = nn.pop("history")
        if logger is not None:  # rank 0 logs
            _log_history(logger, history, loop.iterations_per_epoch)
        card.nnunet = nn
        card.checkpoint = nn["checkpoints"]["best"]
        card.arch_kwargs = {**dict(job.arch_kwargs), "patch_size_nnunet": nn["patch_size_nnunet"],
                            "spacing_nnunet": nn["spacing_nnunet"]}
        return {"distributed": {**dist.describe(), "nnunet_ddp": dist.distributed, "global_batch": loop.batch_size}}

    def load(self, run_dir: Path, card: ModelCard, device: torch.device,
             checkpoint: str | None = None) -> NnUNetStageModel:
        return NnUNetStageModel(card, run_dir, device, checkpoint)

    def model_files(self, card: dict[str, Any]) -> list[str]:
        """The checkpoint, and nnU-Net's plans and dataset.json that its predictor reads."""
        return [str(card["checkpoint"]), str(card["nnunet"]["plans"]), str(card["nnunet"]["dataset_json"])]

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
