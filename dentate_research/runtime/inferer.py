"""Sliding-window inference with Gaussian blending and laterality-safe test-time augmentation (TTA).

One implementation serves validation during training and
:class:`~dentate_research.runtime.stage_model.NetworkStageModel` at inference, so every architecture is evaluated
with identical settings (window = training patch, overlap 0.5, Gaussian importance weighting).

TTA policies:
    ``none``: a single pass.
    ``lr_swap``: also predict the left-right mirrored image, mirror the output back and swap the left/right DN
    channels (1 <-> 2, :func:`dentate_research.data.labels.swap_left_right_channels`) before averaging; for
    side-less targets (cerebellum) no channel swap is needed.
    ``all_flips_lr_swap``: every combination of flips over the three axes, with the channel swap whenever the
    left-right axis is flipped (8 passes).
A plain left-right flip without channel swap is never used for lateralized labels. The passes, the un-flip, the
channel swap and the average are :func:`tta_average`, shared by the MONAI inferer (:func:`predict_probabilities`)
and the nnU-Net stage model (:class:`~dentate_research.runtime.nnunet_model.NnUNetStageModel`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ..data.geometry import largest_component
from ..data.labels import LATERAL, swap_left_right_channels
from ..schema import TRAIN_SETTING_RANGES, BlendMode, InferencePrecision, InfererConfig, TTAPolicy
from .device import cpu_bf16_supported

TTA_POLICIES = TTAPolicy.words()
PRECISIONS = InferencePrecision.words()
BLEND_MODES = BlendMode.words()
ProbsT = TypeVar("ProbsT", np.ndarray, torch.Tensor)


@dataclass
class InfererSettings:
    """Sliding-window settings (roi_size in voxels on the stage grid); defaults from
    :class:`dentate_research.schema.InfererConfig`, where they live."""

    roi_size: tuple[int, int, int]
    overlap: float = InfererConfig.overlap
    mode: str = InfererConfig.mode
    sigma_scale: float = InfererConfig.sigma_scale
    sw_batch_size: int = InfererConfig.sw_batch_size
    tta: str = InfererConfig.tta
    precision: str = InfererConfig.precision

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"inferer.precision '{self.precision}' unknown; allowed: {list(PRECISIONS)}")
        if self.tta not in TTA_POLICIES:
            raise ValueError(f"inferer.tta '{self.tta}' unknown; allowed: {list(TTA_POLICIES)}")
        if self.mode not in BLEND_MODES:
            raise ValueError(f"inferer.mode '{self.mode}' unknown; allowed: {list(BLEND_MODES)}")
        for name in ("overlap", "sigma_scale", "sw_batch_size"):  # the ranges a composed config is checked against
            ok, allowed = TRAIN_SETTING_RANGES[f"inferer.{name}"]
            if not ok(getattr(self, name)):
                raise ValueError(f"inferer.{name}={getattr(self, name)!r} is not allowed; allowed: {allowed}")
        self.roi_size = tuple(int(r) for r in self.roi_size)  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, d: dict, roi_size: Sequence[int]) -> InfererSettings:
        keys = ("overlap", "mode", "sigma_scale", "sw_batch_size", "tta", "precision")
        return cls(roi_size=tuple(roi_size), **{k: d[k] for k in keys if k in d})  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return {"roi_size": list(self.roi_size), "overlap": self.overlap, "mode": self.mode,
                "sigma_scale": self.sigma_scale, "sw_batch_size": self.sw_batch_size, "tta": self.tta,
                "precision": self.precision}


def tta_flip_sets(policy: str, lr_axis: int) -> list[tuple[int, ...]]:
    """Array axes flipped in each TTA pass (``()`` = the unflipped pass)."""
    if policy == "none":
        return [()]
    if policy == "lr_swap":
        return [(), (lr_axis,)]
    return [tuple(c) for r in range(4) for c in itertools.combinations(range(3), r)]


def _flip(array: ProbsT, axes: Sequence[int]) -> ProbsT:
    """Reverse ``array`` (numpy array or torch tensor) along ``axes``."""
    if isinstance(array, torch.Tensor):
        return torch.flip(array, list(axes))
    return np.flip(array, tuple(axes))


def tta_average(predict_flipped: Callable[[tuple[int, ...]], ProbsT], policy: str, lr_axis: int,
                lateralized: bool, channel_axis: int) -> ProbsT:
    """Mean class probabilities over the TTA passes of ``policy`` (numpy or torch, whatever ``predict_flipped``
    returns).

    Args:
        predict_flipped: ``flip -> probabilities`` of the image mirrored along the spatial axes ``flip`` (``()`` =
            unflipped), channels on ``channel_axis`` and the spatial axes right after it.
        policy: TTA policy (:data:`TTA_POLICIES`); passes from :func:`tta_flip_sets`.
        lr_axis: spatial axis of world left-right.
        lateralized: channels 1/2 are left/right DN: after a left-right mirrored pass they are swapped
            (:func:`dentate_research.data.labels.swap_left_right_channels`), when there are that many channels.
        channel_axis: array axis of the class channels (1 for (B, C, X, Y, Z), 0 for (C, X, Y, Z)).
    """
    total = None
    flips = tta_flip_sets(policy, lr_axis)
    for flip in flips:
        probs = predict_flipped(flip)
        if flip:
            probs = _flip(probs, [channel_axis + 1 + a for a in flip])
            if lateralized and lr_axis in flip and probs.shape[channel_axis] >= LATERAL.n_classes:
                probs = swap_left_right_channels(probs, axis=channel_axis)
        total = probs if total is None else total + probs
    return total / len(flips)  # type: ignore[operator]


class _Bf16Forward(torch.nn.Module):
    """A network's forward under bf16 autocast, logits back in float32 (``inferer.precision=bf16``): the
    sliding-window blending, softmax and TTA averaging stay float32."""

    def __init__(self, inner: torch.nn.Module, device_type: str):
        super().__init__()
        self.inner, self.device_type = inner, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.inner(x)
        return out[0].float() if isinstance(out, (tuple, list)) else out.float()


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
        amp: autocast on CUDA (float16; training's ``trainer.amp``); ``settings.precision == "bf16"`` autocasts the
            network in bf16 on CUDA and on CPUs with native bf16 (float32 on other CPUs). Softmax and blending run in
            float32 either way.
    """
    device = torch.device(device)
    # bf16 where it is fast: CUDA, or a CPU with native bf16 (AVX512-BF16 / AMX); elsewhere oneDNN emulates it,
    # slower than float32, so such a CPU runs the float32 forward (probabilities within ~0.04 of each other)
    if settings.precision == "bf16" and (device.type != "cpu" or cpu_bf16_supported()):
        network = _Bf16Forward(network, device.type)
    network.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)

    def predict_flipped(flip: tuple[int, ...]) -> torch.Tensor:  # (1, C, X, Y, Z) softmax of the flipped image
        xin = _flip(x, [d + 2 for d in flip]) if flip else x
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = sliding_window_inference(xin, settings.roi_size, settings.sw_batch_size, network,
                                              overlap=settings.overlap, mode=settings.mode,
                                              sigma_scale=settings.sigma_scale)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1)

    return tta_average(predict_flipped, settings.tta, lr_axis, lateralized, channel_axis=1)[0].cpu().numpy()


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
