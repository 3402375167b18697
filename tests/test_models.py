"""Architecture registry: every network builds and maps a patch to class logits; patch sizes checked early."""

from __future__ import annotations

import pytest
import torch

from dentate_research.models import (
    ARCHITECTURES,
    available_architectures,
    build_network,
    get_arch,
    validate_patch_size,
)

SMALL_KWARGS = {
    "unet": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "attention_unet": {"channels": [8, 16, 32], "strides": [2, 2]},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "unetr": {"feature_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
}


def test_registry_lists_the_required_architectures():
    assert {"nnunet", "unet", "unetr", "segresnet", "swin_unetr", "attention_unet"} <= set(available_architectures())
    with pytest.raises(ValueError, match="available: .*nnunet"):
        get_arch("vnet")


@pytest.mark.parametrize("name", sorted(SMALL_KWARGS))
def test_network_maps_patch_to_class_logits(name):
    patch = (64, 32, 32) if name == "swin_unetr" else (32, 32, 32)
    net = build_network(name, 1, 3, patch, SMALL_KWARGS[name])
    out = net(torch.zeros(1, 1, *patch))
    out.mean().backward()  # trainable at this patch (e.g. normalization layers see > 1 voxel)
    assert out.shape == (1, 3, *patch)


def test_recommended_optimizers_fit_the_architecture_family():
    for name in ("unetr", "swin_unetr"):
        spec = get_arch(name).optimizer
        assert spec.name == "AdamW" and spec.lr <= 1e-4  # transformers: not U-Net's SGD settings
    assert get_arch("nnunet").optimizer.name == "SGD" and get_arch("nnunet").optimizer.lr == pytest.approx(1e-2)
    assert get_arch("unet").optimizer.lr > get_arch("unetr").optimizer.lr


@pytest.mark.parametrize(("name", "patch", "divisor"), [
    ("unetr", (40, 32, 32), 16), ("swin_unetr", (48, 64, 64), 32), ("unet", (36, 32, 32), 16),
    ("segresnet", (30, 32, 32), 8)])
def test_bad_patch_size_is_a_clear_value_error(name, patch, divisor):
    with pytest.raises(ValueError, match=f"not divisible by {divisor}") as info:
        validate_patch_size(name, patch)
    assert str(list(patch)) in str(info.value) and name in str(info.value)


def test_divisor_follows_the_kwargs():
    validate_patch_size("unet", (24, 24, 24), {"strides": [2, 2, 2]})  # 8 divides 24
    with pytest.raises(ValueError, match="divisible by 16"):
        validate_patch_size("unet", (24, 24, 24), {"strides": [2, 2, 2, 2]})
    with pytest.raises(ValueError, match="bottleneck"):
        validate_patch_size("swin_unetr", (32, 32, 32))  # 1x1x1 at patch / 32: instance norm cannot train
    validate_patch_size("swin_unetr", (64, 32, 32))
    with pytest.raises(ValueError, match="3 positive integers"):
        validate_patch_size("unet", (32, 32))
    assert ARCHITECTURES["nnunet"].builder is None  # built from nnU-Net's plans, not here
    with pytest.raises(ValueError, match="nnunet"):
        build_network("nnunet", 1, 3, (32, 32, 32))
