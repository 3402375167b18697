"""A trained stage at run time: :class:`NetworkStageModel`, :func:`load_stage_model`, :func:`load_stage`.

The contract (:class:`~dentate_research.model_contract.ModelCard`, the :class:`~dentate_research.model_contract.
StageModel` protocol) lives in :mod:`dentate_research.model_contract`. One subclass per framework of the card
(``ModelCard.framework``) predicts with that framework's network: ``monai`` -> :class:`.monai_model.MonaiStageModel`
(our sliding-window inferer), ``nnunet`` -> :class:`.nnunet_model.NnUNetStageModel` (nnU-Net's predictor);
:func:`load_stage_model` dispatches on the card and :func:`model_files` names the files loading reads. Training
(:mod:`dentate_research.training`) and inference (:mod:`dentate_research.inference`) both load stages through here;
this package imports neither.

``load_stage_model(run_dir).predict(volume)`` returns an integer label map on the input volume's grid:
localization -> 0/1 (cerebellum), segmentation -> 0/1/2 (left/right DN in world RAS).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.geometry import resample_to_reference, resample_to_spacing
from ..data.io import DataError, Volume
from ..model_contract import STAGES, ModelCard, card_label_scheme, card_value
from ..schema import InfererConfig
from .device import resolve_device
from .inferer import InfererSettings, postprocess_labels

__all__ = ["FRAMEWORKS", "NetworkStageModel", "load_stage", "load_stage_model", "model_files"]

# framework of a model card -> "module:class" of its stage model (modules of this package, imported on first use)
_STAGE_MODELS = {"monai": "monai_model:MonaiStageModel", "nnunet": "nnunet_model:NnUNetStageModel"}
FRAMEWORKS = tuple(_STAGE_MODELS)


def stage_model_class(framework: str) -> type[NetworkStageModel]:
    """The :class:`NetworkStageModel` subclass of ``framework``; ValueError naming the choices otherwise."""
    if framework not in _STAGE_MODELS:
        raise ValueError(f"unknown framework '{framework}'; allowed: {', '.join(FRAMEWORKS)}")
    module_name, class_name = _STAGE_MODELS[framework].split(":")
    return getattr(import_module(f".{module_name}", __package__), class_name)


def model_files(card: dict[str, Any]) -> list[str]:
    """Run-folder-relative files besides ``model.json`` that loading the stage of ``card`` (a model.json dict)
    reads: what installing a model copies."""
    return stage_model_class(str(card.get("framework", "monai"))).files(card)


class NetworkStageModel:
    """A trained stage ready for inference (implements the :class:`~dentate_research.model_contract.StageModel`
    protocol): ``predict(volume) -> labels on the volume's grid``.

    ``predict_with_confidence(volume, merge_foreground=False) -> (labels, max-class probability)`` on the same grid
    (used by inference QC);
    ``predict_probabilities(volume) -> (probs (C, X, Y, Z), grid)`` on the network grid (subclasses implement it:
    one per training backend, :mod:`dentate_research.training.backends`).
    """

    def __init__(self, card: ModelCard, run_dir: Path, device: torch.device, checkpoint: str | None = None):
        self.card = card
        self.run_dir = Path(run_dir)
        self.device = device
        self.settings = InfererSettings.from_dict(card.inferer, card.patch_size)

    @property
    def lateralized(self) -> bool:
        """Channels 1/2 are left/right DN (the card's label scheme, :func:`~dentate_research.model_contract.
        card_label_scheme`)."""
        return card_label_scheme(self.card).lateralized

    def _to_network_grid(self, volume: Volume) -> Volume:
        spacing = tuple(self.card.target_spacing_mm)
        if np.allclose(volume.spacing, spacing, atol=1e-3):
            return volume
        return resample_to_spacing(volume, spacing)

    @classmethod
    def files(cls, card: dict[str, Any]) -> list[str]:
        """Run-folder-relative files (besides model.json) that loading reads: the card's checkpoint."""
        return [str(card["checkpoint"])]

    def predict_probabilities(self, volume: Volume) -> tuple[np.ndarray, Volume]:
        """Class probabilities (C, X, Y, Z) on the network grid, and that grid (as a Volume of the input)."""
        raise NotImplementedError

    def predict(self, volume: Volume) -> np.ndarray:
        """Integer labels (uint8) on ``volume``'s grid (canonical RAS Volume as from ``load_image``)."""
        return self._labels_on_input_grid(volume)[0]

    def predict_with_confidence(self, volume: Volume, merge_foreground: bool = False
                                ) -> tuple[np.ndarray, np.ndarray]:
        """Labels as :meth:`predict` and a per-voxel confidence (float32) on ``volume``'s grid.

        Confidence = the maximum over classes of the class probabilities, after the same linear resampling to the
        input grid that the labels come from. With ``merge_foreground`` the foreground classes count as one
        (confidence = max(p_background, 1 - p_background)): what matters when a later step re-derives the
        classes, e.g. DN sides assigned from world x; for 2-class models (background, DN) both are the same.
        """
        return self._labels_on_input_grid(volume, merge_foreground)

    def _labels_on_input_grid(self, volume: Volume, merge_foreground: bool = False
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Shared by :meth:`predict` and :meth:`predict_with_confidence`: (uint8 labels, float32 confidence)."""
        if volume.array.ndim != 3:
            raise DataError(f"expected a 3D volume, got shape {volume.array.shape}")
        probs, grid = self.predict_probabilities(volume)
        if grid.shape != volume.shape or not np.allclose(grid.affine, volume.affine, atol=1e-3):
            channels = [resample_to_reference(Volume(p.astype(np.float32), grid.affine), volume, order=1).array
                        for p in probs]
            probs = np.stack(channels)
        labels = np.argmax(probs, axis=0).astype(np.uint8)
        if merge_foreground:
            confidence = np.maximum(probs[0], 1.0 - probs[0]).astype(np.float32)
        else:
            confidence = np.max(probs, axis=0).astype(np.float32)
        labels = postprocess_labels(labels, bool(self.card.postprocess.get("largest_component_per_class",
                                                                         InfererConfig.largest_component_per_class)))
        return labels, confidence


def load_stage_model(run_dir: Path | str, device: str | torch.device = "cpu",
                     checkpoint: str | None = None) -> NetworkStageModel:
    """Load a trained stage from its run directory with the backend of its card's framework (MONAI or nnU-Net).

    Args:
        run_dir: folder written by ``train`` (contains model.json).
        device: ``cpu`` or ``cuda`` (error if CUDA is requested but unavailable).
        checkpoint: weights file relative to ``run_dir`` (default: the card's, i.e. the best checkpoint).
    """
    run_dir = Path(run_dir)
    card = ModelCard.from_json(run_dir / "model.json")
    dev = resolve_device(str(device))
    try:
        cls = stage_model_class(card.framework)
    except ValueError as exc:
        raise DataError(f"{run_dir}/model.json: {exc}") from exc
    return cls(card, run_dir, dev, checkpoint)


def load_stage(run_dir: Path | str, stage: str, device: str = "cpu") -> NetworkStageModel:
    """Load a trained stage model from its run directory and check it is the expected ``stage``.

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
    model = load_stage_model(run_dir, device=device)
    found = card_value(model.card, "stage")
    if found != stage:
        raise DataError(f"{run_dir}: is a '{found}' model, but a '{stage}' model is needed here")
    return model
