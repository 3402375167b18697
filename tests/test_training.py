"""Training: preprocessing, laterality-safe augmentation/TTA, every architecture trains and predicts, nnU-Net."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dentate_research.data.geometry import BoundingBox, crop
from dentate_research.data.io import load_image, load_label
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, check_sides
from dentate_research.data.manifest import read_manifest
from dentate_research.model_contract import ModelCard
from dentate_research.runtime.device import resolve_device
from dentate_research.runtime.inferer import InfererSettings, predict_probabilities
from dentate_research.runtime.normalization import normalize_intensity
from dentate_research.runtime.stage_model import load_stage_model
from dentate_research.schema import compose
from dentate_research.training.augmentation import AugmentationSettings, Augmenter
from dentate_research.training.datasets import PatchSampler
from dentate_research.training.preprocessing import prepare_samples
from dentate_research.training.toy_data import make_toy_case, make_toy_dataset

# tiny network settings: every architecture trains in seconds on 32^3 patches
TINY_ARCH = {
    "unet": ["arch.kwargs.channels=[8,16,32]", "arch.kwargs.strides=[2,2]", "arch.kwargs.num_res_units=1"],
    "attention_unet": ["arch.kwargs.channels=[8,16,32]", "arch.kwargs.strides=[2,2]"],
    "segresnet": ["arch.kwargs.init_filters=8", "arch.kwargs.blocks_down=[1,1,1]", "arch.kwargs.blocks_up=[1,1]"],
    "unetr": ["arch.kwargs.feature_size=8", "arch.kwargs.hidden_size=32", "arch.kwargs.mlp_dim=64",
              "arch.kwargs.num_heads=2", "trainer.iterations_per_epoch=1"],
    "swin_unetr": ["arch.kwargs.feature_size=12", "arch.kwargs.depths=[1,1,1,1]", "arch.kwargs.num_heads=[1,1,1,1]",
                   "trainer.iterations_per_epoch=1", "data.grid.segmentation.patch_size=[64,32,32]"],
    "nnunet": ["arch.kwargs.n_stages=3", "arch.kwargs.features_base=8", "arch.kwargs.max_features=32"],
}


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_cases=5, seed=1)


def toy_config(manifest: Path, run_dir: Path, arch: str, stage: str = "segmentation", extra: list[str] = ()):
    cases = [c.case_id for c in read_manifest(manifest)]
    overrides = [
        f"+arch={arch}", f"stage={stage}", "trainer=smoke", "logger=none", "data=manifest",
        f"data.manifest={manifest}", "data.grid.segmentation.spacing_mm=2.0",
        "data.grid.segmentation.patch_size=[32,32,32]", "data.grid.localization.spacing_mm=4.0",
        "data.grid.localization.patch_size=[32,32,32]", "data.label_rater='true'", "split=explicit",
        f"split.train=[{','.join(cases[:3])}]", f"split.val=[{cases[3]}]", f"paths.run_dir={run_dir}",
        "trainer.epochs=1", "stage.crop.margin_mm=6.0", *TINY_ARCH[arch], *extra]
    cfg = compose("train", overrides)
    OmegaConf.resolve(cfg)
    OmegaConf.set_struct(cfg, False)
    return cfg


# ---------------------------------------------------------------- preprocessing

def test_normalize_zscore_nonzero_keeps_background_zero():
    rng = np.random.default_rng(0)
    array = np.zeros((10, 10, 10), np.float32)
    array[2:8, 2:8, 2:8] = rng.normal(0.05, 0.02, (6, 6, 6))
    out = normalize_intensity(array, "zscore_nonzero")
    inside = array != 0
    assert abs(out[inside].mean()) < 1e-5 and abs(out[inside].std() - 1) < 1e-4
    assert np.all(out[~inside] == 0)
    spiky = array.copy()
    spiky[4, 4, 4] = 50.0  # a streak/vein outlier: robust clipping bounds it
    assert normalize_intensity(spiky, "robust_zscore_nonzero").max() < normalize_intensity(spiky).max()
    with pytest.raises(ValueError, match="allowed"):
        normalize_intensity(array, "minmax")


def test_segmentation_crop_contains_dn_even_with_jitter(toy_manifest):
    cases = read_manifest(toy_manifest)
    crop = {"source": "cerebellum", "margin_mm": 4.0, "jitter_mm": 6.0}
    samples = prepare_samples(cases, "segmentation", spacing_mm=2.0, normalization={"scheme": "zscore_nonzero"},
                              crop_cfg=crop, training=True, seed=3)
    for case, sample in zip(cases, samples, strict=True):
        dn = load_label(case.labels["true"])
        assert (sample.label == LEFT_DN).sum() == (dn.array == LEFT_DN).sum()  # whole DN inside the crop
        assert (sample.label == RIGHT_DN).sum() == (dn.array == RIGHT_DN).sum()
        assert check_sides(sample.label, sample.affine)["sides_consistent"] is True  # LAS files handled
        assert sample.raw_image is not None and sample.image.shape == sample.label.shape


# ---------------------------------------------------------------- laterality

def test_lr_flip_augmentation_keeps_world_sides():
    image, labels, _, affine = make_toy_case(rng=np.random.default_rng(0))
    settings = AugmentationSettings(lr_flip="swap_labels", lr_flip_prob=1.0, affine_prob=0, intensity_prob=0,
                                    noise_prob=0, smooth_prob=0)
    aug_image, aug_labels = Augmenter(settings, lateralized_labels=True)(image, labels, affine)
    assert not np.array_equal(aug_image, image)  # the image really was mirrored
    sides = check_sides(aug_labels, affine)
    assert sides["left_x_mm"] < 0 < sides["right_x_mm"]  # label 1 is still at world x < 0 (anatomical left)
    # the mirrored bright blob now at world x < 0 is the (smaller) right DN of the original, labelled 1
    assert (aug_labels == LEFT_DN).sum() == (labels == RIGHT_DN).sum()
    assert np.all(aug_image[aug_labels == LEFT_DN] > 0.1)


def test_plain_lr_flip_rejected_for_lateralized_labels():
    with pytest.raises(ValueError, match="swap"):
        Augmenter(AugmentationSettings(lr_flip="plain"), lateralized_labels=True)
    with pytest.raises(ValueError, match="left-right axis"):
        aug = Augmenter(AugmentationSettings(other_flip_axes=[0], lr_flip="none"), lateralized_labels=True)
        image, labels, _, affine = make_toy_case()
        aug(image, labels, affine)


class _PositionNet(torch.nn.Module):
    """Predicts class 1 on the array-left half and class 2 on the right half, whatever the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2]
        logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
        logits[:, 1, : n // 2] = 5
        logits[:, 2, n // 2:] = 5
        return logits


def test_tta_lr_flip_swaps_channels_back():
    image = np.random.default_rng(0).normal(size=(32, 16, 16)).astype(np.float32)
    net = _PositionNet()
    plain = predict_probabilities(net, image, InfererSettings((32, 16, 16), tta="none"))
    for policy in ("lr_swap", "all_flips_lr_swap"):
        tta = predict_probabilities(net, image, InfererSettings((32, 16, 16), tta=policy))
        np.testing.assert_array_equal(tta.argmax(0), plain.argmax(0))
        assert tta[1, :16].mean() > 0.9  # without the swap, left/right would be mixed 50/50


def test_windows_per_network_call_do_not_change_probabilities():
    """sw_batch_size is speed only (2 by default: PyTorch's CPU convolution skips oneDNN for a batch of one): a real
    MONAI U-Net on an image of 3 x 2 x 2 windows (an odd count: the last call is short) gives the same output."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    image = np.random.default_rng(1).normal(size=(40, 24, 24)).astype(np.float32)
    outputs = [predict_probabilities(net, image, InfererSettings((16, 16, 16), overlap=0.25, sw_batch_size=n))
               for n in (1, 2, 5)]
    assert InfererSettings((16, 16, 16)).sw_batch_size == 2
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], atol=1e-5)
    # the library path refuses what a composed config refuses (with_inferer.py, model cards edited by hand)
    for bad, allowed in (({"sw_batch_size": 0}, "integer >= 1"), ({"sw_batch_size": 2.5}, "integer >= 1"),
                         ({"overlap": 1.0}, r"\[0, 1\)"), ({"sigma_scale": 0.0}, "> 0")):
        with pytest.raises(ValueError, match=f"inferer.{next(iter(bad))}=.*allowed: .*{allowed}"):
            InfererSettings((16, 16, 16), **bad)


def test_bf16_precision_and_channels_last_at_inference():
    """``inferer.precision=bf16`` runs a real MONAI Attention U-Net's forward under bf16 autocast: probabilities
    float32, within bf16 rounding of the float32 pass but not identical (the setting is really applied);
    a CPU without native bf16 runs the float32 forward; channels_last_3d weights (what MonaiStageModel loads) give
    the float32 probabilities unchanged. An unknown precision is refused with the allowed values, and the setting
    survives a card round trip."""
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(0)
    net = AttentionUnet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2)).eval()
    image = np.random.default_rng(2).normal(size=(40, 24, 24)).astype(np.float32)
    reference = predict_probabilities(net, image, InfererSettings((16, 16, 16)))
    bf16 = predict_probabilities(net, image, InfererSettings((16, 16, 16), precision="bf16"))
    assert bf16.dtype == np.float32 and bf16.shape == reference.shape
    difference = float(np.abs(bf16 - reference).max())
    assert 0 < difference < 0.05, difference
    with pytest.MonkeyPatch.context() as patch:  # a CPU without native bf16 runs the float32 forward
        patch.setattr("dentate_research.runtime.inferer.cpu_bf16_supported", lambda: False)
        np.testing.assert_array_equal(
            predict_probabilities(net, image, InfererSettings((16, 16, 16), precision="bf16")), reference)
    net.to(memory_format=torch.channels_last_3d)
    np.testing.assert_allclose(predict_probabilities(net, image, InfererSettings((16, 16, 16))), reference,
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"inferer.precision 'fp8' unknown; allowed: \['float32', 'bf16'\]"):
        InfererSettings((16, 16, 16), precision="fp8")
    settings = InfererSettings((16, 16, 16), precision="bf16", tta="lr_swap")
    assert InfererSettings.from_dict(settings.to_dict(), (16, 16, 16)) == settings
    assert InfererSettings.from_dict({}, (16, 16, 16)).precision == "float32"  # cards written before the setting


def test_patch_sampler_shapes_and_foreground(toy_manifest):
    cases = read_manifest(toy_manifest)[:2]
    samples = prepare_samples(cases, "segmentation", spacing_mm=2.0, normalization={"scheme": "zscore_nonzero"},
                              crop_cfg={"margin_mm": 4.0})
    sampler = PatchSampler(samples, (32, 32, 32), batch_size=4, foreground_prob=1.0, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == (4, 1, 32, 32, 32) and y.shape == (4, 1, 32, 32, 32)
    assert all(y[i].max() > 0 for i in range(4))  # foreground-centred patches


# ---------------------------------------------------------------- errors

def test_device_and_arch_errors_are_clear(tmp_path, toy_manifest):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    from dentate_research.training.api import train_stage

    cfg = toy_config(toy_manifest, tmp_path / "run", "unet")
    del cfg["arch"]
    with pytest.raises(ValueError, match="choices: .*nnunet.*unetr"):
        train_stage(cfg)
    bad = toy_config(toy_manifest, tmp_path / "run2", "unetr")
    bad.stage.patch_size = [40, 40, 40]
    bad.data.manifest = "/nonexistent/manifest.tsv"  # the patch check must fire before any data is read
    with pytest.raises(ValueError, match="divisible by 16"):
        train_stage(bad)


# ---------------------------------------------------------------- every architecture

def _check_prediction(run_dir: Path, manifest: Path, stage: str):
    model = load_stage_model(run_dir)
    assert isinstance(model.card, ModelCard) and model.card.stage == stage
    case = read_manifest(manifest)[4]  # unseen case, stored LAS on disk
    volume = load_image(case.image)
    if stage == "segmentation":  # the segmentation stage receives a crop (any size, native grid)
        volume = crop(volume, BoundingBox((8, 4, 4), (48, 36, 28)))
    labels = model.predict(volume)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    allowed = {0, 1} if stage == "localization" else {0, 1, 2}
    assert set(np.unique(labels).tolist()) <= allowed
    for name in ("config.yaml", "run_info.json", "model.json", "metrics.csv", "training_curve.png"):
        assert (run_dir / name).exists(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"] and "sha" in info["git"]
    return model, volume


@pytest.mark.parametrize("arch", ["unet", "attention_unet", "segresnet", "unetr", "swin_unetr"])
def test_monai_architecture_trains_and_predicts(arch, tmp_path, toy_manifest):
    from dentate_research.training.api import train_stage

    run_dir = train_stage(toy_config(toy_manifest, tmp_path / arch, arch))
    assert (run_dir / "checkpoints" / "best.pt").exists() and (run_dir / "checkpoints" / "final.pt").exists()
    card = json.loads((run_dir / "model.json").read_text())
    assert card["arch"] == arch and 0 <= card["metrics"]["val_dice_left"] <= 1
    _check_prediction(run_dir, toy_manifest, "segmentation")


def test_localization_stage_logs_bbox_recall_and_resumes(tmp_path, toy_manifest):
    from dentate_research.training.api import train_stage

    run_dir = train_stage(toy_config(toy_manifest, tmp_path / "loc", "unet", "localization"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"val_bbox_recall", "val_dn_voxel_recall", "val_crop_size_mm_x", "val_dice_cerebellum"} <= set(rows[0])
    _check_prediction(run_dir, toy_manifest, "localization")
    # resume: one more epoch continues from checkpoints/last.pt
    cfg = toy_config(toy_manifest, run_dir, "unet", "localization", ["trainer.epochs=2", "trainer.resume=true"])
    train_stage(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("phase") != "final"] == [1, 2]


@pytest.mark.slow
def test_nnunet_plans_trains_and_predicts(tmp_path, toy_manifest):
    from dentate_research.training.api import train_stage

    run_dir = train_stage(toy_config(toy_manifest, tmp_path / "nnunet", "nnunet"))
    card = json.loads((run_dir / "model.json").read_text())
    nn = card["nnunet"]
    splits = json.loads(next((run_dir / "nnunet" / "preprocessed").glob("*/splits_final.json")).read_text())
    assert splits == [{"train": card["train_cases"], "val": card["val_cases"]}]  # our split, not nnU-Net's
    assert nn["lr_axis"] == nn["transpose_forward"].index(2)
    assert nn["lr_axis"] not in nn["inference_allowed_mirroring_axes"]  # no left-right mirroring
    plans = json.loads((run_dir / nn["plans"]).read_text())
    assert plans["configurations"]["dentate"]["patch_size"] == [32, 32, 32]
    assert (run_dir / nn["checkpoints"]["final"]).exists()
    from dentate_research.runtime.device import cpu_bf16_supported

    assert nn["cpu_bf16"] is cpu_bf16_supported()  # trainer.amp (the default): nnU-Net's CPU steps in bf16
    model, volume = _check_prediction(run_dir, toy_manifest, "segmentation")
    model.settings.tta = "lr_swap"  # our laterality-safe TTA on top of nnU-Net's predictor (its mirroring is off)
    assert model.predict(volume).shape == volume.shape
    assert model.predictor.use_mirroring is False


def test_training_is_deterministic_for_a_seed(tmp_path, toy_manifest):
    from dentate_research.training.api import train_stage

    losses = []
    for name in ("a", "b"):
        run_dir = train_stage(toy_config(toy_manifest, tmp_path / name, "unet"))
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["train_loss"] for r in rows if r.get("phase") != "final"])
    assert losses[0] == losses[1]


def test_mixed_precision_and_channels_last_train_weights_that_load_anywhere(tmp_path, toy_manifest, monkeypatch,
                                                                           caplog):
    """The defaults (trainer.amp, trainer.channels_last) train a network whose checkpoint a plain float32
    network loads and predicts with; on a CPU without native bf16 the loop says so and trains in float32
    (identical losses to trainer.amp=false)."""
    import logging

    from dentate_research.runtime import device as device_module
    from dentate_research.training.api import train_stage

    cfg = toy_config(toy_manifest, tmp_path / "fast", "unet")
    assert cfg.trainer.amp is True and cfg.trainer.channels_last is True  # the schema's defaults
    run_dir = train_stage(cfg)
    model = load_stage_model(run_dir)
    # inference: float32, convolution weights in channels_last_3d (MonaiStageModel: same probabilities, faster)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in model.network.parameters()
               if p.dim() == 5)
    assert all(p.dtype == torch.float32 for p in model.network.parameters())
    _check_prediction(run_dir, toy_manifest, "segmentation")

    def losses(run: Path) -> list[float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in rows if r.get("phase") != "final"]

    monkeypatch.setattr(device_module, "cpu_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="dentate_research.runtime.device"):
        no_bf16 = train_stage(toy_config(toy_manifest, tmp_path / "no_bf16", "unet"))
    assert "no native bfloat16" in caplog.text
    fp32 = train_stage(toy_config(toy_manifest, tmp_path / "fp32", "unet", extra=["trainer.amp=false"]))
    assert losses(no_bf16) == losses(fp32)


def test_nnunet_lr_mirror_swaps_labels():
    from dentate_research.training.nnunet_runner import _lr_swap_mirror_transform, lr_axis_in_nnunet

    axis = lr_axis_in_nnunet([0, 1, 2])
    assert axis == 2  # SimpleITK (z, y, x): for canonical RAS files the left-right axis is the last one
    seg = torch.zeros(1, 4, 4, 8, dtype=torch.int16)
    seg[0, :, :, :2] = LEFT_DN  # low x index = world left in RAS
    seg[0, :, :, 6:] = RIGHT_DN
    seg[0, 0, 0, 3] = -1  # nnU-Net's outside-mask marker is untouched
    image = torch.arange(8, dtype=torch.float32).expand(1, 4, 4, 8).clone()
    out = _lr_swap_mirror_transform(axis, probability=1.0)(image=image, segmentation=seg)
    assert torch.equal(out["image"][0, 0, 0], torch.arange(7, -1, -1, dtype=torch.float32))
    assert torch.all(out["segmentation"][0, :, :, :2] == LEFT_DN)  # the mirrored right DN is now the left one
    assert torch.all(out["segmentation"][0, :, :, 6:] == RIGHT_DN)
    assert out["segmentation"][0, 0, 0, 4] == -1


def test_non_finite_updates_are_skipped_and_a_diverged_run_fails(tmp_path, toy_manifest, monkeypatch):
    """A step whose loss is NaN is skipped (the weights stay finite, metrics count it); five in a row fail the run
    with a message naming the remedies, and no model is written (a diverged run is never reported done)."""
    from monai.losses import DiceCELoss

    from dentate_research.training import monai_loop
    from dentate_research.training.api import train_stage

    def loss_with_nan_on(bad_calls):
        class Loss(DiceCELoss):
            calls = 0

            def forward(self, logits, target):
                Loss.calls += 1
                loss = super().forward(logits, target)
                return loss * float("nan") if bad_calls(Loss.calls) else loss
        return Loss

    monkeypatch.setattr(monai_loop, "DiceCELoss", loss_with_nan_on(lambda call: call == 2))
    run_dir = train_stage(toy_config(toy_manifest, tmp_path / "one_nan", "unet",
                                     extra=["trainer.iterations_per_epoch=4"]))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["skipped_steps"] == 1 and np.isfinite(rows[0]["train_loss"])
    assert all(torch.isfinite(p).all() for p in load_stage_model(run_dir).network.parameters())

    monkeypatch.setattr(monai_loop, "DiceCELoss", loss_with_nan_on(lambda call: call >= 3))
    with pytest.raises(monai_loop.TrainingDivergedError, match=r"5 steps in a row \(iteration 7.*trainer.amp=false"):
        train_stage(toy_config(toy_manifest, tmp_path / "diverged", "unet", extra=["trainer.iterations_per_epoch=8"]))
    assert not (tmp_path / "diverged" / "model.json").exists()


def test_swin_unetr_trains_in_float32_on_cpu(caplog):
    """SwinUNETR's gradients turn non-finite under bf16 autocast on CPU (measured: inf/NaN within 6-13 AdamW steps,
    MONAI 1.6, torch 2.13), so trainer.amp leaves it in float32 there, with a warning; the other networks keep bf16."""
    import logging

    from dentate_research.models import get_arch
    from dentate_research.runtime import device as device_module

    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="dentate_research.runtime.device"):
        swin = device_module.amp_usable(True, cpu, "swin_unetr", cpu_bf16_safe=get_arch("swin_unetr").cpu_bf16_safe)
    assert swin is False and "swin_unetr's gradients non-finite" in caplog.text
    unet = device_module.amp_usable(True, cpu, "unet", cpu_bf16_safe=get_arch("unet").cpu_bf16_safe)
    assert unet is device_module.cpu_bf16_supported()
    assert device_module.amp_usable(True, torch.device("cuda"), "swin_unetr", cpu_bf16_safe=False) is True
