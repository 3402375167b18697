"""Laterality-safe data augmentation for training patches, with optional SynthSeg-style domain randomization.

Label 1 is the LEFT DN and 2 the RIGHT DN in world coordinates. A left-right mirror of the image moves the left
DN to the right side, so a mirror is only allowed together with a 1 <-> 2 label swap
(:func:`dentate_research.data.laterality.mirror_left_right`), or not at all. Flips along the other axes
(anterior-posterior, superior-inferior) keep sides but are anatomically implausible and off by default.

Spatial (rotation, scaling) and intensity (gain, offset, noise, smoothing) augmentations come from MONAI.

Domain randomization (all off by default, see ``configs/augmentation/domain_randomization.yaml``) mimics what
differs between QSM sites: reconstruction streaking (TKD-like errors near the magic-angle cone), residual
background field (additive smooth field), smooth gain variation (multiplicative bias field), resolution (isotropic
low resolution, thick slices, blur), Gibbs ringing, noise, nonlinear contrast (gamma, histogram shift) and the DN's
own contrast against its surroundings (SynthSeg-style per-label intensity). Every one of them acts on the image
only: labels stay bit-identical (only the affine transform and flips touch labels), and none moves content across
the midline, so left/right stay anatomically true. Partial coverage (``fov_cut``) is the one exception: it removes a
slab beyond a plane from image and label alike, as a scan that stops inside the nucleus. Units: the image is z-score
normalized per case, so intensities are "normalized units" (case SD); sizes are voxels unless named ``*_mm``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.fft
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandGibbsNoised,
    RandHistogramShiftd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)
from monai.utils import convert_data_type
from numpy.polynomial import legendre
from scipy.ndimage import binary_dilation, convolve1d, gaussian_filter

from ..data.laterality import lr_axis, mirror_left_right
from ..schema import AugmentationSettings, LRFlip

LR_FLIP_MODES = LRFlip.words()
AFFINE_KEY = "world_affine"  # voxel -> world (mm) matrix of the patch grid, passed along in the transform dict
# ---------------------------------------------------------------- array functions (one channel, X, Y, Z)

def legendre_field(shape: Sequence[int], coeffs: np.ndarray, degree: int) -> np.ndarray:
    """Smooth field sum_{i+j+k<=degree} c_ijk P_i(x) P_j(y) P_k(z) on [-1, 1]^3 spanning the array (unitless).

    ``coeffs`` holds one coefficient per (i, j, k) with 1 <= i + j + k <= degree (no constant term).
    """
    powers = [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    mat = np.zeros((degree + 1,) * 3, dtype=np.float32)
    for p, c in zip([p for p in powers if sum(p)], coeffs, strict=True):
        mat[p] = c
    basis = [legendre.legvander(np.linspace(-1.0, 1.0, n), degree).T.astype(np.float32) for n in shape]
    return np.einsum("ijk,ia,jb,kc->abc", mat, *basis, optimize=True).astype(np.float32, copy=False)


def n_legendre_terms(degree: int) -> int:
    """Number of non-constant 3-D Legendre terms of total degree <= ``degree``."""
    return (degree + 1) * (degree + 2) * (degree + 3) // 6 - 1


def add_offset_field(image: np.ndarray, amplitude: float, rng: np.random.Generator, degree: int = 3) -> np.ndarray:
    """Add a random smooth field whose peak |value| is ``amplitude`` (normalized units) to ``image``."""
    f = legendre_field(image.shape, rng.standard_normal(n_legendre_terms(degree)), degree)
    peak = float(np.abs(f).max())
    return image if peak == 0 else (image + f * np.float32(amplitude / peak)).astype(np.float32)


def box_kernel(width: float) -> np.ndarray:
    """Normalized 1-D box of ``width`` voxels centred on a voxel; fractional widths get fractional edge taps."""
    half = width / 2
    m = int(np.ceil(half - 0.5))
    taps = np.arange(-m, m + 1)
    w = np.clip(np.minimum(taps + 0.5, half) - np.maximum(taps - 0.5, -half), 0.0, None)
    return (w / w.sum()).astype(np.float32)


def linear_sample(x: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linearly interpolate ``x`` along ``axis`` at fractional voxel ``positions`` (clamped to the end voxels)."""
    n = x.shape[axis]
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0, n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    t = (pos - lo).astype(np.float32).reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - t) + np.take(x, hi, axis=axis) * t


def thick_slice_matrix(n: int, thickness_vox: float, offset_vox: float) -> np.ndarray:
    """(n, n) matrix of thick-slice acquisition along one axis of ``n`` voxels (see :func:`simulate_thick_slices`).

    Each slab averages over ``thickness_vox`` voxels (box profile), slab centres lie at ``offset_vox + j *
    thickness_vox`` (voxels), and the slab values are linearly interpolated back to the ``n`` grid positions.
    """
    eye = np.eye(n, dtype=np.float32)  # column j = response to a unit impulse at voxel j
    slab = convolve1d(eye, box_kernel(thickness_vox), axis=0, mode="nearest")
    slices = linear_sample(slab, 0, np.arange(offset_vox, n - 1 + 1e-6, thickness_vox))
    return linear_sample(slices, 0, (np.arange(n) - offset_vox) / thickness_vox).astype(np.float32)


def simulate_thick_slices(image: np.ndarray, axis: int, thickness_vox: float, offset_vox: float) -> np.ndarray:
    """Acquire ``image`` as contiguous slabs ``thickness_vox`` voxels thick along array ``axis`` and resample back.

    Slab averaging, one sample per slab (first slab centre at ``offset_vox`` voxels) and linear interpolation back
    to the original grid, applied as one matrix along ``axis``; the other axes are untouched. ``thickness_vox <= 1``
    returns a copy.
    """
    if thickness_vox <= 1.0:
        return image.copy()
    m = thick_slice_matrix(image.shape[axis], thickness_vox, offset_vox)
    out = np.tensordot(m, image.astype(np.float32, copy=False), axes=([1], [axis]))
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def dipole_kernel_rfft(shape: Sequence[int], affine: np.ndarray, b0_world: np.ndarray) -> np.ndarray:
    """Dipole kernel D(k) = 1/3 - (k.b)^2 / |k|^2 on the ``rfftn`` grid of an array (unitless, D(0) := 1/3).

    ``affine``: voxel -> world (mm); k is the world spatial frequency of each array frequency, so anisotropic
    voxels and any array orientation are handled. ``b0_world``: unit B0 direction in world coordinates.
    """
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3])
    c = (inv @ np.asarray(b0_world, dtype=np.float64)).astype(np.float32)  # k_world . b = k_index . c
    g = (inv @ inv.T).astype(np.float32)  # |k_world|^2 = k_index^T g k_index
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    k = np.meshgrid(*[f.astype(np.float32) for f in freqs], indexing="ij", sparse=True)
    kb = c[0] * k[0] + c[1] * k[1] + c[2] * k[2]
    k2 = sum(g[i, j] * k[i] * k[j] for i in range(3) for j in range(3))
    k2 = np.where(k2 > 0, k2, np.float32(1.0))
    d = np.float32(1 / 3) - kb * kb / k2
    d[0, 0, 0] = 1 / 3
    return d.astype(np.float32)


def random_b0_direction(max_tilt_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vector uniformly distributed on the spherical cap within ``max_tilt_deg`` (degrees) of world +z."""
    cos_t = rng.uniform(np.cos(np.deg2rad(max_tilt_deg)), 1.0)
    phi = rng.uniform(0.0, 2 * np.pi)
    sin_t = np.sqrt(max(0.0, 1.0 - cos_t ** 2))
    return np.array([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])


def streak_field(shape: Sequence[int], affine: np.ndarray, b0_world: np.ndarray, threshold: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Unit-SD streaking pattern: white noise keeping only frequencies where |D(k)| < ``threshold`` (float32).

    This is the part of k-space that thresholded k-space division (TKD) cannot invert: errors there show up as
    streaks along the magic-angle cone. The spectrum of white noise is white complex Gaussian noise, so it is drawn
    directly on the kept frequencies (no forward FFT). Returns zeros when no frequency qualifies.
    """
    mask = np.abs(dipole_kernel_rfft(shape, affine, b0_world)) < threshold
    spectrum = np.zeros(mask.shape, dtype=np.complex64)  # the spectrum of white noise is white complex noise:
    n = int(mask.sum())  # draw it only where it is kept (same distribution, no forward FFT)
    spectrum[mask] = rng.standard_normal(n, dtype=np.float32) + 1j * rng.standard_normal(n, dtype=np.float32)
    field_ = scipy.fft.irfftn(spectrum, s=tuple(shape)).astype(np.float32)
    sd = float(field_.std())
    return field_ / np.float32(sd) if sd > 0 else field_


# ---------------------------------------------------------------- MONAI-style randomizable dictionary transforms

def _draw(transform: RandomizableTransform) -> np.random.Generator | None:
    """Decide (with ``transform``'s own MONAI random state) whether it acts on this sample; if it does, a numpy
    generator seeded from that state for its parameters, else None."""
    transform.randomize(None)
    if not transform._do_transform:
        return None
    return np.random.default_rng(int(transform.R.randint(0, 2 ** 31 - 1)))


def _array_axis(affine: np.ndarray, world_axis: int) -> int:
    """The array axis that runs most along ``world_axis`` (0 = x, 1 = y, 2 = z) of a voxel -> world affine."""
    return int(np.argmax(np.abs(affine[world_axis, :3])))


class _RandImageTransformd(RandomizableTransform, MapTransform):
    """Apply ``_apply(channel, affine, rng)`` to each channel of the image key(s) with probability ``prob``.

    Randomness comes from the transform's own MONAI random state (seeded by ``Compose.set_random_state``); the
    voxel -> world affine is read from ``data[AFFINE_KEY]``. Labels are never touched.
    """

    def __init__(self, prob: float, keys: Sequence[Hashable] = ("image",)):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)

    def _apply(self, x: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        rng = _draw(self)
        if rng is None:
            return d
        affine = np.asarray(d[AFFINE_KEY], dtype=np.float64)
        for key in self.key_iterator(d):
            img = convert_data_type(d[key], np.ndarray, dtype=np.float32)[0]
            d[key] = np.stack([self._apply(c, affine, rng) for c in img]).astype(np.float32)
        return d


class RandGaussianNoiseRanged(_RandImageTransformd):
    """Add zero-mean Gaussian noise with SD drawn from U(std_range) (normalized units)."""

    def __init__(self, prob: float, std_range: tuple[float, float], keys: Sequence[Hashable] = ("image",)):
        super().__init__(prob, keys)
        self.std_range = std_range

    def _apply(self, x: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        std = np.float32(rng.uniform(*self.std_range))
        return x + rng.standard_normal(x.shape, dtype=np.float32) * std


class RandOffsetFieldd(_RandImageTransformd):
    """Add a smooth degree-3 field with peak |value| from U(0, ``amplitude``) normalized units."""

    def __init__(self, prob: float, amplitude: float, keys: Sequence[Hashable] = ("image",)):
        super().__init__(prob, keys)
        self.amplitude = amplitude

    def _apply(self, x: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return add_offset_field(x, rng.uniform(0.0, self.amplitude), rng)


class RandThickSlicesd(_RandImageTransformd):
    """Thick-slice partial volume along a random allowed world axis; thickness from U(``thickness_mm``) in mm."""

    def __init__(self, prob: float, thickness_mm: tuple[float, float], world_axes: Sequence[int],
                 keys: Sequence[Hashable] = ("image",)):
        super().__init__(prob, keys)
        self.thickness_mm = thickness_mm
        self.world_axes = list(world_axes)

    def _apply(self, x: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        world_axis = int(self.world_axes[rng.integers(len(self.world_axes))])
        axis = _array_axis(affine, world_axis)
        spacing_mm = float(np.linalg.norm(affine[:3, axis]))
        thickness_vox = rng.uniform(*self.thickness_mm) / spacing_mm
        return simulate_thick_slices(x, axis, thickness_vox, rng.uniform(0.0, max(thickness_vox, 1.0)))


class RandStreakd(_RandImageTransformd):
    """Add QSM streaking (see :func:`streak_field`) with SD = U(``amplitude``) x patch SD."""

    def __init__(self, prob: float, amplitude: tuple[float, float], threshold: float, max_tilt_deg: float,
                 keys: Sequence[Hashable] = ("image",)):
        super().__init__(prob, keys)
        self.amplitude = amplitude
        self.threshold = threshold
        self.max_tilt_deg = max_tilt_deg

    def _apply(self, x: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b0 = random_b0_direction(self.max_tilt_deg, rng)
        scale = np.float32(rng.uniform(*self.amplitude) * float(x.std()))
        return x + streak_field(x.shape, affine, b0, self.threshold, rng) * scale


class RandLabelContrastd(RandomizableTransform, MapTransform):
    """Scale the contrast of the labelled structure (any label > 0) against its surroundings (SynthSeg-style).

    ``image += (f - 1) * (image - b) * w`` with ``f`` from U(``factor_range``), ``b`` the median image value in a
    3-voxel shell around the structure and ``w`` its mask smoothed with a Gaussian of sigma 1 voxel (no hard edge
    that would give the label away). ``f < 1`` makes the DN fainter, ``f > 1`` brighter. The label is only read.
    """

    def __init__(self, prob: float, factor_range: tuple[float, float], keys: Sequence[Hashable] = ("image",),
                 label_key: Hashable = "label"):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.factor_range = factor_range
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        factor = float(self.R.uniform(*self.factor_range))
        if not self._do_transform:
            return d
        inside = convert_data_type(d[self.label_key], np.ndarray)[0][0] > 0
        if not inside.any():
            return d
        shell = binary_dilation(inside, iterations=3) & ~inside
        weight = gaussian_filter(inside.astype(np.float32), 1.0)
        for key in self.key_iterator(d):
            img = convert_data_type(d[key], np.ndarray, dtype=np.float32)[0]
            out = []
            for channel in img:
                background = float(np.median(channel[shell])) if shell.any() else float(np.median(channel))
                out.append(channel + np.float32(factor - 1.0) * (channel - np.float32(background)) * weight)
            d[key] = np.stack(out).astype(np.float32)
        return d


class RandFovCutd(RandomizableTransform, MapTransform):
    """Partial coverage: remove everything beyond a plane normal to a random allowed WORLD axis (either side).

    The plane cuts a fraction U(``fraction``) of the labelled structure's (any label > 0) extent along that axis;
    image and label beyond it become 0, which is what inference sees beyond a scan's last slice (the crop is
    clipped to the scan and the sliding window pads with zeros in normalized units). A patch without a label is
    returned unchanged. Runs last, after every intensity transform, so the removed slab is exactly 0.
    """

    def __init__(self, prob: float, fraction: tuple[float, float], world_axes: Sequence[int],
                 keys: Sequence[Hashable] = ("image", "label")):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.fraction = fraction
        self.world_axes = list(world_axes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        rng = _draw(self)
        if rng is None:
            return d
        label = convert_data_type(d["label"], np.ndarray)[0]
        world_axis = int(self.world_axes[rng.integers(len(self.world_axes))])
        affine = np.asarray(d[AFFINE_KEY], dtype=np.float64)
        axis = _array_axis(affine, world_axis)
        low_world_side = rng.random() < 0.5  # cut the low world coordinates (e.g. z-: inferior) or the high ones
        others = tuple(a for a in range(label.ndim) if a != axis + 1)  # label is (channel, X, Y, Z)
        along = np.flatnonzero((label > 0).any(axis=others))
        if along.size == 0:
            return d
        lost = int(round(rng.uniform(*self.fraction) * int(along[-1] - along[0] + 1)))
        index: list[Any] = [slice(None)] * label.ndim
        if low_world_side == (affine[world_axis, axis] > 0):  # the low world side lies at low array indices
            index[axis + 1] = slice(0, int(along[0]) + lost)
        else:
            index[axis + 1] = slice(int(along[-1]) + 1 - lost, None)
        for key in self.key_iterator(d):
            out = convert_data_type(d[key], np.ndarray, dtype=np.float32)[0].copy()
            out[tuple(index)] = 0
            d[key] = out
        return d


# ---------------------------------------------------------------- the augmenter

def build_transforms(s: AugmentationSettings) -> list:
    """MONAI dictionary transforms in acquisition order: spatial, reconstruction artefacts, fields, gain/offset,
    noise, blur, resolution, nonlinear contrast, then partial coverage. Options with probability 0 are left out (so
    with every domain randomization option off the list, and therefore the random streams, are the same as without
    them)."""
    img = ["image"]
    deg = np.deg2rad(s.rotate_deg)
    t: list = []
    if s.affine_prob > 0 and (s.rotate_deg > 0 or s.scale > 0):
        t.append(RandAffined(keys=["image", "label"], prob=s.affine_prob, rotate_range=(deg, deg, deg),
                             scale_range=(s.scale, s.scale, s.scale), mode=("bilinear", "nearest"),
                             padding_mode="zeros"))
    if s.dn_contrast_prob > 0:  # anatomy first: how bright the nucleus is in this subject and reconstruction
        t.append(RandLabelContrastd(s.dn_contrast_prob, s.dn_contrast_range))
    if s.streak_prob > 0:
        t.append(RandStreakd(s.streak_prob, s.streak_amplitude, s.streak_threshold, s.streak_tilt_deg))
    if s.gibbs_prob > 0:
        t.append(RandGibbsNoised(keys=img, prob=s.gibbs_prob, alpha=s.gibbs_alpha))
    if s.offset_field_prob > 0:
        t.append(RandOffsetFieldd(s.offset_field_prob, s.offset_field_amplitude))
    if s.bias_field_prob > 0:
        t.append(RandBiasFieldd(keys=img, degree=3, coeff_range=(-s.bias_field_coeff, s.bias_field_coeff),
                                prob=s.bias_field_prob))
    if s.intensity_prob > 0:
        t.append(RandScaleIntensityd(keys=img, factors=s.intensity_scale, prob=s.intensity_prob))
        t.append(RandShiftIntensityd(keys=img, offsets=s.intensity_shift, prob=s.intensity_prob))
    if s.noise_prob > 0:
        if isinstance(s.noise_std, tuple):
            t.append(RandGaussianNoiseRanged(s.noise_prob, s.noise_std))
        else:
            t.append(RandGaussianNoised(keys=img, std=s.noise_std, prob=s.noise_prob))
    if s.smooth_prob > 0:
        t.append(RandGaussianSmoothd(keys=img, sigma_x=s.smooth_sigma, sigma_y=s.smooth_sigma,
                                     sigma_z=s.smooth_sigma, prob=s.smooth_prob))
    if s.thick_slice_prob > 0:
        t.append(RandThickSlicesd(s.thick_slice_prob, s.thick_slice_mm, s.thick_slice_axes))
    if s.lowres_prob > 0:
        t.append(RandSimulateLowResolutiond(keys=img, prob=s.lowres_prob, zoom_range=s.lowres_zoom,
                                            downsample_mode="area", upsample_mode="trilinear"))
    if s.gamma_prob > 0:
        t.append(RandAdjustContrastd(keys=img, prob=s.gamma_prob, gamma=s.gamma_range, retain_stats=True))
    if s.histogram_shift_prob > 0:
        t.append(RandHistogramShiftd(keys=img, num_control_points=s.histogram_shift_points,
                                     prob=s.histogram_shift_prob))
    if s.fov_cut_prob > 0:  # last: the removed slab stays exactly 0, as inference's padding
        t.append(RandFovCutd(s.fov_cut_prob, s.fov_cut_fraction, s.fov_cut_axes))
    return t


class Augmenter:
    """Augment one (image, label) patch pair in canonical RAS arrays (X, Y, Z)."""

    def __init__(self, settings: AugmentationSettings, lateralized_labels: bool, seed: int = 0):
        if settings.lr_flip not in LR_FLIP_MODES:
            raise ValueError(f"augmentation.lr_flip '{settings.lr_flip}' unknown; allowed: {list(LR_FLIP_MODES)}")
        if settings.lr_flip == "plain" and lateralized_labels:
            raise ValueError("augmentation.lr_flip=plain would mirror left-right without swapping labels 1 (left "
                             "DN) and 2 (right DN), teaching the network the wrong sides; use swap_labels or none")
        settings.validate()
        self.settings = settings
        self.lateralized = lateralized_labels
        self.rng = np.random.default_rng(seed)
        self.monai = Compose(build_transforms(settings))
        self.monai.set_random_state(seed=seed)

    def __call__(self, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.settings.enabled:
            return image, label
        s = self.settings
        if s.lr_flip != "none" and self.rng.random() < s.lr_flip_prob:
            if self.lateralized:
                image, label = mirror_left_right(image, label, affine)  # type: ignore[assignment]
            else:
                axis, _ = lr_axis(affine)
                image, label = np.flip(image, axis).copy(), np.flip(label, axis).copy()
        lr, _ = lr_axis(affine)
        for axis in s.other_flip_axes:
            if axis == lr:
                raise ValueError(f"augmentation.other_flip_axes contains the left-right axis {axis}; use lr_flip")
            if self.rng.random() < s.other_flip_prob:
                image, label = np.flip(image, axis).copy(), np.flip(label, axis).copy()
        out = self.monai({"image": image[None].astype(np.float32), "label": label[None].astype(np.float32),
                          AFFINE_KEY: np.asarray(affine, dtype=np.float64)})
        img = np.asarray(out["image"], dtype=np.float32)[0]
        lab = np.rint(np.asarray(out["label"], dtype=np.float32)[0]).astype(np.uint8)
        return img, lab
