"""Sliding-window inference with Gaussian blending and laterality-safe test-time augmentation (TTA).

One implementation serves validation during training and :class:`~dentate_research.training.artifacts.StageModel`
at inference, so every architecture is evaluated with identical settings (window = training patch, overlap 0.5,
Gaussian importance weighting).

TTA policies:
    ``none``: a single pass.
    ``lr_swap``: also predict the left-right mirrored image, mirror the output back and swap the left/right DN
    channels (1 <-> 2, :func:`dentate_research.data.labels.swap_left_right_channels`) before averaging; for
    side-less targets (cerebellum) no channel swap is needed.
    ``all_flips_lr_swap``: every combination of flips over the three axes, with the channel swap whenever the
    left-right axis is flipped (8 passes).
A plain left-right flip without channel swap is never used for lateralized labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ..data.geometry import largest_component
from ..data.labels import LATERAL, swap_left_right_channels
from ..data.overlap import dice as _dice

TTA_POLICIES = ("none", "lr_swap", "all_flips_lr_swap")
BLEND_MODES = ("gaussian", "constant")


@dataclass
class InfererSettings:
    """Sliding-window settings (roi_size in voxels on the stage grid)."""

    roi_size: tuple[int, int, int]
    overlap: float = 0.5
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.tta not in TTA_POLICIES:
            raise ValueError(f"inferer.tta '{self.tta}' unknown; allowed: {list(TTA_POLICIES)}")
        if self.mode not in BLEND_MODES:
            raise ValueError(f"inferer.mode '{self.mode}' unknown; allowed: {list(BLEND_MODES)}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"inferer.overlap must be in [0, 1), got {self.overlap}")
        self.roi_size = tuple(int(r) for r in self.roi_size)  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, d: dict, roi_size: Sequence[int]) -> InfererSettings:
        keys = ("overlap", "mode", "sigma_scale", "sw_batch_size", "tta")
        return cls(roi_size=tuple(roi_size), **{k: d[k] for k in keys if k in d})  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return {"roi_size": list(self.roi_size), "overlap": self.overlap, "mode": self.mode,
                "sigma_scale": self.sigma_scale, "sw_batch_size": self.sw_batch_size, "tta": self.tta}


def tta_flip_sets(policy: str, lr_axis: int) -> list[tuple[int, ...]]:
    """Array axes flipped in each TTA pass (``()`` = the unflipped pass)."""
    if policy == "none":
        return [()]
    if policy == "lr_swap":
        return [(), (lr_axis,)]
    return [tuple(c) for r in range(4) for c in itertools.combinations(range(3), r)]


@torch.no_grad()
def predict_probabilities(network: torch.nn.Module, image: np.ndarray, settings: InfererSettings,
                          device: torch.device | str = "cpu", lr_axis: int = 0, lateralized: bool = True,
                          amp: bool = False) -> np.ndarray:
    """Softmax probabilities (C, X, Y, Z) for a normalized image (X, Y, Z) on the network's grid.

    Args:
        network: maps (B, 1, *roi) to (B, C, *roi) logits.
        image: normalized float image on the stage grid.
        settings: window size (voxels), overlap, blending and TTA policy.
        lr_axis: array axis of world left-right (0 in canonical RAS).
        lateralized: channels 1/2 are left/right DN (swap them for left-right flipped passes).
    """
    device = torch.device(device)
    network.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    total = None
    flips = tta_flip_sets(settings.tta, lr_axis)
    for flip in flips:
        dims = [d + 2 for d in flip]
        xin = torch.flip(x, dims) if dims else x
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = sliding_window_inference(xin, settings.roi_size, settings.sw_batch_size, network,
                                              overlap=settings.overlap, mode=settings.mode,
                                              sigma_scale=settings.sigma_scale)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        probs = torch.softmax(logits.float(), dim=1)
        if dims:
            probs = torch.flip(probs, dims)
            if lateralized and lr_axis in flip and probs.shape[1] >= LATERAL.n_classes:
                probs = swap_left_right_channels(probs, axis=1)
        total = probs if total is None else total + probs
    return (total / len(flips))[0].cpu().numpy()  # type: ignore[index,operator]


def postprocess_labels(labels: np.ndarray, largest_component_per_class: bool = True) -> np.ndarray:
    """Keep the largest 26-connected component of each foreground class (0 elsewhere)."""
    if not largest_component_per_class:
        return labels
    out = np.zeros_like(labels)
    for c in np.unique(labels):
        if c == 0:
            continue
        out[largest_component(labels == c)] = c
    return out


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Training-validation Dice: :func:`dentate_research.data.overlap.dice` with ``empty="one"`` (both empty ->
    1.0, one empty -> 0.0). Kept for existing importers; new code calls ``data.overlap.dice`` with its policy."""
    return _dice(pred, ref, empty="one")
