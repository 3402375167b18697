"""Fine-tuning: start a stage's training from a trained stage model (``init_from=MODEL_DIR``).

A site with 10-20 traced scans adapts a model (the shipped default or a user's) with a short budget and a lower
learning rate (``experiment=finetune``). ``init_from`` names a stage run folder (with ``model.json``), a two-step
model folder (``localization/`` + ``segmentation/``, the stage is picked by ``stage=``) or ``default`` (the model
shipped in ``dentate_research/assets/default_model``).

The network must be the one the weights were trained for, so the stage model's card decides the architecture
settings: ``arch.kwargs``, the label scheme (classes), the target spacing (mm), the patch size (voxels) and the
intensity normalization are taken from it and replace the config's values (the run's config.yaml records the
values used). ``+arch=`` must name the card's architecture. A segmenter of a two-step model folder that was trained
on its localizer's crops fine-tunes on the crops of that folder's localizer (unless
``stage.crop.localizer_run`` is given).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..data.io import DataError
from ..model_contract import ModelCard, card_label_scheme
from .backends import get_backend

log = logging.getLogger(__name__)

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default_model"


def resolve_init_run(init_from: str | Path, stage: str) -> Path:
    """The stage run folder that ``init_from`` designates (see the module docstring)."""
    path = SHIPPED_MODEL if str(init_from) == "default" else Path(str(init_from)).expanduser()
    if (path / stage / "model.json").is_file():
        path = path / stage
    if not (path / "model.json").is_file():
        raise DataError(f"init_from={init_from}: no model.json in {path} or {path / stage}; expected a trained "
                        "stage run folder, a two-step model folder or 'default'")
    return path.resolve()


def apply_init_from(cfg: DictConfig) -> DictConfig:
    """If ``cfg.init_from`` is set: check the card against ``cfg`` and adopt its network settings.

    Sets ``cfg.trainer.init_checkpoint`` (absolute weights path) for the training loop; returns ``cfg``.
    """
    init_from = cfg.get("init_from")
    if not init_from:
        return cfg
    stage = str(cfg.stage.name)
    run = resolve_init_run(init_from, stage)
    card = ModelCard.from_json(run / "model.json")
    if card.stage != stage:
        raise DataError(f"init_from={init_from}: a '{card.stage}' model, but stage={stage}")
    if card.arch != str(cfg.arch.name):
        raise DataError(f"init_from={init_from}: the weights are for arch '{card.arch}', got +arch={cfg.arch.name}; "
                        f"use +arch={card.arch}")
    if not get_backend(card.framework).supports_fine_tuning:
        raise DataError(f"init_from={init_from}: fine-tuning supports the MONAI architectures (this model is "
                        f"'{card.framework}'); nnU-Net users: nnUNetv2_train -pretrained_weights")
    checkpoint = run / card.checkpoint
    if not checkpoint.is_file():
        raise DataError(f"init_from={init_from}: checkpoint {checkpoint} not found")
    adopted: dict[str, Any] = {
        "arch.kwargs": dict(card.arch_kwargs),
        "stage.spacing_mm": list(card.target_spacing_mm),
        "stage.patch_size": list(card.patch_size),
        "stage.normalization": dict(card.normalization),
    }
    if stage == "segmentation":
        adopted["stage.label_scheme"] = card_label_scheme(card).name  # lateral | merged
        sibling = run.parent / "localization"
        if (card.crop or {}).get("source") == "localizer" and not cfg.stage.crop.get("localizer_run") \
                and (sibling / "model.json").is_file():  # a two-step model: train on its own localizer's crops
            adopted["stage.crop.source"] = "localizer"
            adopted["stage.crop.localizer_run"] = str(sibling)
    with open_dict(cfg):
        for key, value in adopted.items():
            OmegaConf.update(cfg, key, value, merge=False)
        cfg.trainer.init_checkpoint = str(checkpoint)
        cfg.init_from = str(run)
    log.info("fine-tuning from %s (%s, %d classes, spacing %s mm, patch %s)", run, card.arch, len(card.classes),
             card.target_spacing_mm, card.patch_size)
    return cfg
