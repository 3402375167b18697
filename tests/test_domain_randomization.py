"""Domain randomization in the training Augmenter: label-safe, laterality-safe, seeded, physically sensible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.ndimage import binary_dilation, binary_erosion

from dentate_research.data.laterality import LEFT_DN, RIGHT_DN
from dentate_research.schema import CONFIG_DIR, compose
from dentate_research.training.augmentation import (
    AugmentationSettings,
    Augmenter,
    dipole_kernel_rfft,
    simulate_thick_slices,
)

N = 28

# every intensity-only option, each alone at probability 1
SINGLE_OPTIONS = {
    "gamma": {"gamma_prob": 1.0},
    "bias_field": {"bias_field_prob": 1.0},
    "offset_field": {"offset_field_prob": 1.0},
    "histogram_shift": {"histogram_shift_prob": 1.0},
    "lowres": {"lowres_prob": 1.0, "lowres_zoom": (0.5, 0.7)},
    "thick_slice": {"thick_slice_prob": 1.0},
    "streak": {"streak_prob": 1.0},
    "noise_range": {"noise_prob": 1.0, "noise_std": (0.02, 0.1)},
    "smooth_range": {"smooth_prob": 1.0, "smooth_sigma": (0.3, 1.0)},
    "gibbs": {"gibbs_prob": 1.0},
    "dn_contrast": {"dn_contrast_prob": 1.0},
}
ALL_ON = {k: v for opts in SINGLE_OPTIONS.values() for k, v in opts.items()}


def _off(**overrides) -> AugmentationSettings:
    """Settings with every option off except ``overrides``."""
    base = {"lr_flip": "none", "affine_prob": 0.0, "intensity_prob": 0.0, "noise_prob": 0.0, "smooth_prob": 0.0}
    return AugmentationSettings(**{**base, **overrides})


def _affine(flip_x: bool = False, spacing: float = 1.0) -> np.ndarray:
    """Voxel -> world affine with the array centre at world (0, 0, 0); ``flip_x`` gives an LAS grid."""
    a = np.diag([(-1.0 if flip_x else 1.0) * spacing, spacing, spacing, 1.0])
    a[:3, 3] = -a[:3, :3] @ np.full(3, (N - 1) / 2)
    return a


def _world_x(affine: np.ndarray) -> np.ndarray:
    idx = np.indices((N, N, N)).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:4])[0].reshape(N, N, N)


def _case(affine: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth z-scored-like volume with a bright left blob (label 1, world x < 0) and right blob (label 2)."""
    rng = np.random.default_rng(seed)
    idx = np.indices((N, N, N)).reshape(3, -1)
    world = (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape(3, N, N, N)
    label = np.zeros((N, N, N), np.uint8)
    image = 0.3 * rng.standard_normal((N, N, N)).astype(np.float32)
    for value, cx, radius in ((LEFT_DN, -8.0, 4.0), (RIGHT_DN, 8.0, 3.0)):
        blob = (world[0] - cx) ** 2 + world[1] ** 2 + world[2] ** 2 <= radius ** 2
        label[blob] = value
        image[blob] += 2.0
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), label


@pytest.mark.parametrize("name", sorted(SINGLE_OPTIONS))
def test_each_option_changes_only_the_image(name):
    affine = _affine()
    image, label = _case(affine)
    aug = Augmenter(_off(**SINGLE_OPTIONS[name]), lateralized_labels=True, seed=1)
    for _ in range(2):
        out_image, out_label = aug(image, label, affine)
        assert out_label.dtype == label.dtype and np.array_equal(out_label, label)  # bit-identical labels
        assert out_image.dtype == np.float32 and out_image.shape == image.shape
        assert np.isfinite(out_image).all()
        assert not np.allclose(out_image, image, atol=1e-4)


def test_new_options_default_off_and_keep_the_old_pipeline():
    aug = Augmenter(AugmentationSettings(), lateralized_labels=True)
    names = [type(t).__name__ for t in aug.monai.transforms]
    assert names == ["RandAffined", "RandScaleIntensityd", "RandShiftIntensityd", "RandGaussianNoised",
                     "RandGaussianSmoothd"]


def test_deterministic_for_a_seed():
    affine = _affine()
    image, label = _case(affine)
    settings = _off(**ALL_ON, affine_prob=1.0, lr_flip="swap_labels")
    a, b, c = (Augmenter(settings, lateralized_labels=True, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        (ia, la), (ib, lb), (ic, _) = a(image, label, affine), b(image, label, affine), c(image, label, affine)
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)
        assert not np.allclose(ia, ic)


def test_laterality_kept_with_everything_on_and_las_grid():
    affine = _affine(flip_x=True)  # LAS: array index grows towards world left
    image, label = _case(affine)
    x = _world_x(affine)
    assert (x[label == LEFT_DN] < 0).all() and (x[label == RIGHT_DN] > 0).all()
    settings = _off(**ALL_ON, lr_flip="swap_labels", lr_flip_prob=0.5, affine_prob=1.0, intensity_prob=1.0)
    aug = Augmenter(settings, lateralized_labels=True, seed=3)
    left_sizes = set()
    for _ in range(8):
        _, out = aug(image, label, affine)
        assert (out == LEFT_DN).any() and (out == RIGHT_DN).any()
        assert (x[out == LEFT_DN] < 0).all(), "label 1 (left DN) found at world x > midline"
        assert (x[out == RIGHT_DN] > 0).all(), "label 2 (right DN) found at world x < midline"
        left_sizes.add(int((out == LEFT_DN).sum()) > int((out == RIGHT_DN).sum()))
    assert left_sizes == {True, False}  # the label-swapping mirror really happened (the big blob changed side)


def _gradient_energy(x: np.ndarray, axis: int) -> float:
    return float(np.mean(np.diff(x, axis=axis) ** 2))


@pytest.mark.parametrize("world_z_array_axis", [2, 0])
def test_thick_slices_act_along_the_world_axis_only(world_z_array_axis):
    # a permuted grid: world z may run along array axis 0
    perm = np.eye(4)
    if world_z_array_axis == 0:
        perm[:3, :3] = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)  # array (i, j, k) -> world (j, k, i)
    affine = perm
    other = 1 if world_z_array_axis == 0 else 0
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((N, N, N)).astype(np.float32)
    label = np.zeros((N, N, N), np.uint8)
    aug = Augmenter(_off(thick_slice_prob=1.0, thick_slice_mm=(2.5, 3.0)), lateralized_labels=True, seed=0)
    out, _ = aug(noise, label, affine)
    before = _gradient_energy(noise, world_z_array_axis) / _gradient_energy(noise, other)
    after = _gradient_energy(out, world_z_array_axis) / _gradient_energy(out, other)
    assert after < 0.3 * before  # high frequencies along the slice axis removed, much less so in-plane
    # an image constant along the slice axis is left alone: nothing happens in-plane
    flat = np.repeat(np.take(noise, [0], axis=world_z_array_axis), N, axis=world_z_array_axis)
    out_flat, _ = aug(flat, label, affine)
    np.testing.assert_allclose(out_flat, flat, atol=1e-5)


def test_thick_slices_use_mm():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((N, N, N)).astype(np.float32)
    label = np.zeros((N, N, N), np.uint8)
    aug = Augmenter(_off(thick_slice_prob=1.0, thick_slice_mm=(1.5, 3.0)), lateralized_labels=True, seed=0)
    out, _ = aug(noise, label, _affine(spacing=3.0))  # slabs no thicker than one 3 mm voxel: no change
    np.testing.assert_allclose(out, noise, atol=1e-6)
    x = np.arange(N, dtype=np.float32)[None, None, :] * np.ones((N, N, 1), np.float32)
    np.testing.assert_allclose(simulate_thick_slices(x, 2, 3.0, 1.0)[..., 2:-2], x[..., 2:-2], atol=1e-4)  # linear


def test_streaks_live_in_the_magic_angle_cone():
    affine = _affine(spacing=1.0)
    image, label = _case(affine)
    threshold = 0.15
    aug = Augmenter(_off(streak_prob=1.0, streak_tilt_deg=0.0, streak_threshold=threshold,
                         streak_amplitude=(0.2, 0.3)), lateralized_labels=True, seed=2)
    out, _ = aug(image, label, affine)
    added = (out - image).astype(np.float64)
    assert 0.19 < added.std() / image.std() < 0.31
    power = np.abs(np.fft.rfftn(added)) ** 2
    cone = np.abs(dipole_kernel_rfft(added.shape, affine, np.array([0.0, 0.0, 1.0]))) < threshold
    assert 0.05 < cone.mean() < 0.6  # the cone is a minority of k-space ...
    assert power[cone].sum() / power.sum() > 0.99  # ... but holds all of the streak energy


def test_dipole_kernel_handles_grid_orientation():
    shape = (8, 8, 8)
    ras = dipole_kernel_rfft(shape, np.eye(4), np.array([0.0, 0.0, 1.0]))
    assert np.isclose(ras[0, 0, 1], -2 / 3) and np.isclose(ras[1, 0, 0], 1 / 3)  # k || B0 and k _|_ B0
    perm = np.eye(4)
    perm[:3, :3] = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)  # world z along array axis 0
    d = dipole_kernel_rfft(shape, perm, np.array([0.0, 0.0, 1.0]))
    assert np.isclose(d[1, 0, 0], -2 / 3) and np.isclose(d[0, 0, 1], 1 / 3)


def test_from_dict_converts_lists_and_rejects_unknown_keys():
    s = AugmentationSettings.from_dict({"gamma_range": [0.8, 1.2], "thick_slice_mm": [2, 3], "noise_std": [0.0, 0.1],
                                        "histogram_shift_points": [4, 8], "thick_slice_axes": (0, 2)})
    assert s.gamma_range == (0.8, 1.2) and s.thick_slice_mm == (2, 3) and s.noise_std == (0.0, 0.1)
    assert s.histogram_shift_points == (4, 8) and s.thick_slice_axes == [0, 2]
    with pytest.raises(ValueError, match="unknown key"):
        AugmentationSettings.from_dict({"gamma_probability": 0.3})
    with pytest.raises(ValueError, match="gamma_prob"):
        Augmenter(AugmentationSettings(gamma_prob=1.5), lateralized_labels=True)
    with pytest.raises(ValueError, match="thick_slice_axes"):
        Augmenter(AugmentationSettings(thick_slice_axes=[3]), lateralized_labels=True)


def test_dataclass_defaults_are_the_only_defaults():
    raw = OmegaConf.load(CONFIG_DIR / "augmentation" / "default.yaml")
    assert not raw  # the YAML states no value: the schema's dataclass holds every default
    composed = OmegaConf.to_container(compose("train", ["+arch=unet"]).augmentation, resolve=True)
    fields = {f.name for f in dataclasses.fields(AugmentationSettings)}
    assert set(composed) == fields  # every option reaches the composed config with exactly one default
    assert AugmentationSettings.from_dict(composed) == AugmentationSettings()


def test_hydra_domain_randomization_config_composes():
    cfg = compose("train", ["+arch=unet", "augmentation=domain_randomization"])
    settings = AugmentationSettings.from_dict(OmegaConf.to_container(cfg.augmentation, resolve=True))
    assert settings.lr_flip == "swap_labels" and settings.streak_prob > 0 and settings.thick_slice_axes == [2]
    assert settings.noise_std == (0.02, 0.1) and settings.smooth_sigma == (0.3, 1.0)
    affine = _affine(flip_x=True)
    image, label = _case(affine)
    aug = Augmenter(settings, lateralized_labels=True, seed=0)
    for _ in range(3):
        out_image, out_label = aug(image, label, affine)
        assert np.isfinite(out_image).all() and out_image.shape == image.shape


@pytest.mark.parametrize("factor", [0.4, 1.4])
def test_dn_contrast_scales_the_nucleus_against_its_surroundings(factor):
    affine = _affine()
    image, label = _case(affine)
    aug = Augmenter(_off(dn_contrast_prob=1.0, dn_contrast_range=(factor, factor)), lateralized_labels=True)
    out, out_label = aug(image, label, affine)
    assert np.array_equal(out_label, label)
    inside = label > 0
    far = ~binary_dilation(inside, iterations=6)  # voxels far from both blobs keep their values
    np.testing.assert_allclose(out[far], image[far], atol=1e-4)
    core = binary_erosion(inside, iterations=2)  # the soft weight is ~1 there (sigma 1 voxel)
    background = float(np.median(image[binary_dilation(inside, iterations=3) & ~inside]))
    ratio = (out[core] - background).mean() / (image[core] - background).mean()
    assert ratio == pytest.approx(factor, abs=0.12)


def test_robust_config_composes_and_keeps_sides():
    cfg = compose("train", ["+arch=unet", "augmentation=robust"])
    settings = AugmentationSettings.from_dict(OmegaConf.to_container(cfg.augmentation, resolve=True))
    assert settings.thick_slice_axes == [0, 1, 2] and settings.gibbs_prob > 0 and settings.dn_contrast_prob > 0
    affine = _affine(flip_x=True)
    image, label = _case(affine)
    x = _world_x(affine)
    aug = Augmenter(settings, lateralized_labels=True, seed=5)
    for _ in range(6):
        out_image, out = aug(image, label, affine)
        assert np.isfinite(out_image).all()
        assert (x[out == LEFT_DN] < 0).all() and (x[out == RIGHT_DN] > 0).all()


@pytest.mark.parametrize("flip_x", [False, True])
@pytest.mark.parametrize("world_axis", [0, 2])
def test_fov_cut_removes_image_and_label_beyond_a_world_plane(flip_x, world_axis):
    """Partial coverage: a half-space along the chosen WORLD axis becomes 0 in image and label, both sides of the
    axis occur, the labelled extent lost is within the asked fraction, the rest is untouched and sides stay true."""
    affine = _affine(flip_x=flip_x)
    image, label = _case(affine)
    idx = np.indices((N, N, N)).reshape(3, -1)
    world = (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape(3, N, N, N)
    w = world[world_axis]
    labelled = np.unique(w[label > 0])  # world coordinates (1 mm apart) that hold a label
    aug = Augmenter(_off(fov_cut_prob=1.0, fov_cut_fraction=(0.3, 0.6), fov_cut_axes=[world_axis]),
                    lateralized_labels=True, seed=2)
    cut_low_side = set()
    for _ in range(10):
        out_image, out = aug(image, label, affine)
        removed = out_image == 0  # the input has no exact zero
        assert removed.any() and not removed.all()
        assert np.array_equal(out[~removed], label[~removed]) and np.array_equal(out_image[~removed], image[~removed])
        assert not out[removed].any()
        low = w[removed].max() < w[~removed].min()
        assert low or w[removed].min() > w[~removed].max()  # a half-space, not scattered voxels
        cut_low_side.add(bool(low))
        lost = np.isin(labelled, np.unique(w[removed])).sum()
        assert 0.3 * labelled.size - 1 <= lost <= 0.6 * labelled.size + 1
        assert (world[0][out == LEFT_DN] < 0).all() and (world[0][out == RIGHT_DN] > 0).all()
    assert cut_low_side == {True, False}
    empty = np.zeros_like(label)
    out_image, out = aug(image, empty, affine)  # nothing labelled: nothing to place the plane by, unchanged
    assert np.array_equal(out_image, image) and not out.any()


def test_fov_cut_runs_after_every_intensity_transform():
    settings = _off(**ALL_ON, fov_cut_prob=1.0, fov_cut_fraction=(0.3, 0.6))
    names = [type(t).__name__ for t in Augmenter(settings, lateralized_labels=True).monai.transforms]
    assert names[-1] == "RandFovCutd"  # the removed slab stays exactly 0, like inference's padding
    affine = _affine()
    image, label = _case(affine)
    out_image, out = Augmenter(settings, lateralized_labels=True, seed=4)(image, label, affine)
    removed = ~out.any(axis=(0, 1)) & label.any(axis=(0, 1))  # axial slices of the nucleus that were cut away
    assert removed.any() and (out_image[:, :, removed] == 0).all()
