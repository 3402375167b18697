"""Architecture registry: one entry per network name, declaring what the network needs.

Every segmentation/localization network used in the project is registered here with

- ``framework``: ``"monai"`` (trained by our own torch loop) or ``"nnunet"`` (trained by nnunetv2 itself),
- ``divisor(kwargs)``: the number each patch side (voxels) must be divisible by (UNETR: 16, SwinUNETR: 32,
  U-Net: 2 ** number of strided levels, ...),
- the recommended optimizer and learning rate (transformers: AdamW ~1e-4; CNNs: Adam/AdamW ~1e-3;
  nnU-Net: its own SGD 1e-2, Nesterov momentum 0.99),
- a builder that returns a ``torch.nn.Module`` mapping ``(B, in_channels, *patch)`` to ``(B, out_channels, *patch)``.

Patch sizes are checked up front by :func:`validate_patch_size` so that a bad size fails with a clear ValueError
before any data is loaded, not deep inside a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..schema import arch_config_kwargs


@dataclass(frozen=True)
class OptimizerSpec:
    """Recommended optimizer for an architecture (names as in ``torch.optim``)."""

    name: str  # "AdamW" | "Adam" | "SGD"
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.99  # SGD only
    nesterov: bool = True  # SGD only


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture needs and how to build it."""

    name: str
    framework: str  # "monai" | "nnunet"
    description: str
    divisor: Callable[[Mapping[str, Any]], int]
    optimizer: OptimizerSpec
    builder: Callable[..., torch.nn.Module] | None = None
    fixed_patch_size: bool = False  # True when the network is built for exactly one input size (UNETR)
    min_bottleneck_voxels: int = 1  # voxels at patch / divisor; instance norm there needs > 1 (SwinUNETR)
    # bf16 autocast on CPU trains it correctly (False: SwinUNETR, whose loss or gradients turn inf/NaN within ~15
    # AdamW steps under CPU bf16 autocast, MONAI 1.6 / torch 2.13, benchmarks/bench_bf16_stability.py; it then trains
    # in float32 on CPU, at about the same speed)
    cpu_bf16_safe: bool = True

    @property
    def default_kwargs(self) -> dict[str, Any]:
        """The architecture's keyword arguments from ``configs/arch/<name>.yaml``, the one place they are written
        (:func:`dentate_research.schema.arch_config_kwargs`)."""
        return arch_config_kwargs(self.name)


def _strided_levels(kwargs: Mapping[str, Any]) -> int:
    strides = kwargs["strides"]
    factor = 1
    for s in strides:
        factor *= int(s) if not isinstance(s, Sequence) else int(max(s))
    return factor


def _build_unet(in_channels: int, out_channels: int, patch_size: Sequence[int], **kw: Any) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(kw.pop("channels")), strides=tuple(kw.pop("strides")), **kw)


def _build_attention_unet(in_channels: int, out_channels: int, patch_size: Sequence[int],
                          **kw: Any) -> torch.nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                         channels=tuple(kw.pop("channels")), strides=tuple(kw.pop("strides")), **kw)


def _build_unetr(in_channels: int, out_channels: int, patch_size: Sequence[int], **kw: Any) -> torch.nn.Module:
    from monai.networks.nets import UNETR

    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(int(p) for p in patch_size),
                 spatial_dims=3, **kw)


def _build_segresnet(in_channels: int, out_channels: int, patch_size: Sequence[int],
                     **kw: Any) -> torch.nn.Module:
    from monai.networks.nets import SegResNet

    if "blocks_down" in kw:
        kw["blocks_down"] = tuple(kw["blocks_down"])
    if "blocks_up" in kw:
        kw["blocks_up"] = tuple(kw["blocks_up"])
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kw)


def _build_swin_unetr(in_channels: int, out_channels: int, patch_size: Sequence[int],
                      **kw: Any) -> torch.nn.Module:
    from monai.networks.nets import SwinUNETR

    for key in ("depths", "num_heads"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=3, **kw)


ARCHITECTURES: dict[str, ArchSpec] = {
    "unet": ArchSpec(
        "unet", "monai", "MONAI residual U-Net (Kerfoot et al.)",
        divisor=_strided_levels, optimizer=OptimizerSpec("AdamW", 1e-3, 1e-5), builder=_build_unet),
    "attention_unet": ArchSpec(
        "attention_unet", "monai", "MONAI Attention U-Net (Oktay et al.)",
        divisor=_strided_levels, optimizer=OptimizerSpec("AdamW", 1e-3, 1e-5), builder=_build_attention_unet),
    "segresnet": ArchSpec(
        "segresnet", "monai", "MONAI SegResNet (Myronenko, BraTS 2018)",
        divisor=lambda kw: 2 ** (len(kw["blocks_down"]) - 1),
        optimizer=OptimizerSpec("AdamW", 1e-3, 1e-5), builder=_build_segresnet),
    "unetr": ArchSpec(
        "unetr", "monai", "MONAI UNETR (ViT encoder, 16^3 tokens; built for one patch size)",
        divisor=lambda kw: 16, optimizer=OptimizerSpec("AdamW", 1e-4, 1e-5), builder=_build_unetr,
        fixed_patch_size=True),
    "swin_unetr": ArchSpec(
        "swin_unetr", "monai", "MONAI SwinUNETR (Swin transformer encoder; MONAI 1.6, no img_size)",
        divisor=lambda kw: 32, optimizer=OptimizerSpec("AdamW", 1e-4, 1e-5), builder=_build_swin_unetr,
        min_bottleneck_voxels=2, cpu_bf16_safe=False),
    "nnunet": ArchSpec(
        "nnunet", "nnunet",
        "nnU-Net v2 (self-configuring plain conv U-Net from dynamic_network_architectures, trained by nnunetv2)",
        divisor=lambda kw: 2 ** (int(kw["n_stages"] or 2) - 1),  # n_stages None: fitted to the patch
        optimizer=OptimizerSpec("SGD", 1e-2, 3e-5, momentum=0.99, nesterov=True)),
}


def available_architectures() -> list[str]:
    """Registered architecture names."""
    return sorted(ARCHITECTURES)


def get_arch(name: str) -> ArchSpec:
    """Look up an architecture; an unknown name raises ValueError listing the choices."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}'; available: {', '.join(available_architectures())}")
    return ARCHITECTURES[name]


def validate_patch_size(name: str, patch_size: Sequence[int], kwargs: Mapping[str, Any] | None = None) -> None:
    """Raise ValueError unless every patch side (voxels) is positive and divisible by the network's divisor."""
    spec = get_arch(name)
    merged = {**spec.default_kwargs, **dict(kwargs or {})}
    patch = [int(p) for p in patch_size]
    if len(patch) != 3 or any(p <= 0 for p in patch):
        raise ValueError(f"{name}: patch_size must be 3 positive integers (voxels), got {list(patch_size)}")
    divisor = spec.divisor(merged)
    bad = [p for p in patch if p % divisor]
    if bad:
        suggestion = [max(divisor, int(round(p / divisor)) * divisor) for p in patch]
        raise ValueError(f"{name}: patch_size {patch} is not divisible by {divisor} along every axis "
                         f"(sides {bad}); {name} needs multiples of {divisor}, e.g. {suggestion}")
    bottleneck = [p // divisor for p in patch]
    if int(np.prod(bottleneck)) < spec.min_bottleneck_voxels:
        raise ValueError(f"{name}: patch_size {patch} leaves a {'x'.join(map(str, bottleneck))} voxel bottleneck "
                         f"(patch / {divisor}); its normalization needs at least {spec.min_bottleneck_voxels} voxels "
                         f"there: make one side >= {2 * divisor}, e.g. {[2 * divisor] + patch[1:]}")


def build_network(name: str, in_channels: int, out_channels: int, patch_size: Sequence[int],
                  kwargs: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Build a MONAI network by registry name (nnU-Net networks come from nnU-Net's plans instead).

    Args:
        name: registry key (see :func:`available_architectures`).
        in_channels: input channels (1 for QSM).
        out_channels: classes including background (2 for localization, 3 for left/right DN).
        patch_size: training patch (voxels); validated against the architecture's divisor.
        kwargs: architecture keyword arguments overriding the registry defaults.
    """
    spec = get_arch(name)
    if spec.builder is None:
        raise ValueError(f"{name}: is trained and built by {spec.framework}, not by build_network")
    validate_patch_size(name, patch_size, kwargs)
    merged = {**spec.default_kwargs, **dict(kwargs or {})}
    return spec.builder(in_channels, out_channels, patch_size, **merged)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
