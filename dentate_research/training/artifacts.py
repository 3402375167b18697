"""Trained stage models: the run directory, :class:`NetworkStageModel`, :func:`load_stage_model`.

The contract itself (:class:`~dentate_research.model_contract.ModelCard`, the
:class:`~dentate_research.model_contract.StageModel` protocol) lives in :mod:`dentate_research.model_contract`;
both names are re-exported here. The framework-specific subclasses (``MonaiStageModel``, ``NnUNetStageModel``) live
with their training backends (:mod:`dentate_research.training.backends`), which :func:`load_stage_model` dispatches to.

A run directory written by :func:`dentate_research.training.train_stage` holds::

    config.yaml            resolved configuration of the run
    run_info.json          versions, git SHA, seed, device, timings
    model.json             the ModelCard (everything inference needs besides the weights)
    metrics.csv / .jsonl   one row per epoch (train loss, lr, validation metrics)
    training_curve.png
    checkpoints/best.pt, checkpoints/final.pt, checkpoints/last.pt   (MONAI networks)
    nnunet/                nnU-Net raw/preprocessed/results folders (nnU-Net runs)

``load_stage_model(run_dir).predict(volume)`` returns an integer label map on the input volume's grid:
localization -> 0/1 (cerebellum), segmentation -> 0/1/2 (left/right DN in world RAS).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.atomic import write_figure_atomic, write_text_atomic
from ..data.geometry import resample_to_reference, resample_to_spacing
from ..data.io import DataError, Volume
from ..model_contract import (
    MODEL_CARD_VERSION,
    STAGES,
    ModelCard,
    StageModel,
    card_label_scheme,
    card_value,
    json_default,
)
from ..provenance import TRAINING_PACKAGES, package_versions
from .inferer import InfererSettings, postprocess_labels

__all__ = ["MODEL_CARD_VERSION", "ModelCard", "NetworkStageModel", "StageModel", "git_sha", "load_stage",
           "load_stage_model", "plot_training_curve", "resolve_device", "versions", "write_run_info"]


class NetworkStageModel:
    """A trained stage ready for inference (implements the :class:`~dentate_research.model_contract.StageModel`
    protocol): ``predict(volume) -> labels on the volume's grid``.

    ``predict_with_confidence(volume, merge_foreground=False) -> (labels, max-class probability)`` on the same grid
    (used by inference QC);
    ``predict_probabilities(volume) -> (probs (C, X, Y, Z), grid)`` on the network grid (subclasses implement it:
    one per training backend, :mod:`dentate_research.training.backends`).
    """

    def __init__(self, card: ModelCard, run_dir: Path, device: torch.device):
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
        labels = postprocess_labels(labels, bool(self.card.postprocess.get("largest_component_per_class", True)))
        return labels, confidence


def load_stage_model(run_dir: Path | str, device: str | torch.device = "cpu",
                     checkpoint: str | None = None) -> NetworkStageModel:
    """Load a trained stage from its run directory with the backend of its card's framework (MONAI or nnU-Net).

    Args:
        run_dir: folder written by ``train`` (contains model.json).
        device: ``cpu`` or ``cuda`` (error if CUDA is requested but unavailable).
        checkpoint: weights file relative to ``run_dir`` (default: the card's, i.e. the best checkpoint).
    """
    from .backends import get_backend  # the backends import this module

    run_dir = Path(run_dir)
    card = ModelCard.from_json(run_dir / "model.json")
    dev = resolve_device(str(device))
    try:
        backend = get_backend(card.framework)
    except ValueError as exc:
        raise DataError(f"{run_dir}/model.json: {exc}") from exc
    return backend.load(run_dir, card, dev, checkpoint)


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


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` (cuda if available). Requesting absent CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available (torch {torch.__version__}, "
                             f"cuda build: {torch.version.cuda}); use trainer.device=cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device '{name}' unknown; allowed: cpu, cuda, cuda:N, auto")


def git_sha(repo_dir: Path | None = None) -> dict[str, Any]:
    """Git commit of the code (None when not a repository or no commit yet) and whether the tree is dirty."""
    repo_dir = repo_dir or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                             timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo_dir, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip() if sha.returncode == 0 else None,
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the main training libraries (``not installed`` if absent)."""
    return package_versions(TRAINING_PACKAGES, missing="not installed", with_platform=True)  # type: ignore[return-value]


def write_run_info(run_dir: Path, *, seed: int, device: str, timings: dict[str, float],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``run_info.json`` (versions, git SHA, seed, device, timings in s)."""
    info = {"seed": seed, "device": device, "timings_s": timings, "versions": versions(), "git": git_sha(),
            "host": platform.node(), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    info.update(extra or {})
    path = Path(run_dir) / "run_info.json"
    write_text_atomic(path, json.dumps(info, indent=1, default=json_default) + "\n")
    return path


def plot_training_curve(rows: list[dict[str, Any]], path: Path | str, title: str = "") -> Path | None:
    """Training loss and validation metrics per epoch as a PNG (None when there are no rows)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [r["epoch"] for r in rows]
    if any(r.get("train_loss") is not None for r in rows):
        ax.plot(epochs, [r.get("train_loss", np.nan) for r in rows], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    for key, color in (("val_dice_left", "tab:red"), ("val_dice_right", "tab:green"),
                       ("val_dice_cerebellum", "tab:purple"), ("val_bbox_recall", "tab:orange")):
        vals = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        if vals:
            ax2.plot(*zip(*vals, strict=True), "o-", color=color, label=key)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("validation")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    if handles:
        ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    write_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)
