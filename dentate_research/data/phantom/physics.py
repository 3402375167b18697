"""QSM acquisition physics: the dipole forward model, partial-volume sampling, noise and reconstructions.

Units: susceptibility and the normalized local field are both in ppm (field = delta B / B0 in ppm). Grids are
axis-aligned with world RAS; spacing in mm. All FFTs use ``scipy.fft`` with a fixed worker count so results
are bit-reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

RECONSTRUCTIONS = ("TKD", "Tikhonov", "GradientL2")


def b0_direction(tilt_deg: float, azimuth_deg: float) -> np.ndarray:
    """Unit B0 vector in image (RAS) coordinates: world z tilted by ``tilt_deg`` towards ``azimuth_deg``.

    Azimuth 0 tilts towards +y (anterior, a pitch of the slab), 90 towards +x.
    """
    t, a = np.deg2rad(tilt_deg), np.deg2rad(azimuth_deg)
    b = np.array([np.sin(t) * np.sin(a), np.sin(t) * np.cos(a), np.cos(t)])
    return b / np.linalg.norm(b)


def _k_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], real: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/mm) for an (r)fftn of ``shape`` with voxel ``spacing``, broadcastable."""
    kx = sfft.fftfreq(shape[0], d=spacing[0]).astype(np.float32)
    ky = sfft.fftfreq(shape[1], d=spacing[1]).astype(np.float32)
    if real:
        kz = sfft.rfftfreq(shape[2], d=spacing[2]).astype(np.float32)
    else:
        kz = sfft.fftfreq(shape[2], d=spacing[2]).astype(np.float32)
    return kx[:, None, None], ky[None, :, None], kz[None, None, :]


def dipole_kernel(shape: tuple[int, int, int], spacing: tuple[float, float, float], b0: np.ndarray,
                  real: bool = True) -> np.ndarray:
    """Unit dipole kernel D(k) = 1/3 - (k.b)^2/|k|^2 on an (r)fftn grid; D(0) = 0 (unknown mean)."""
    kx, ky, kz = _k_grid(shape, spacing, real)
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * np.float32(b0[0]) + ky * np.float32(b0[1]) + kz * np.float32(b0[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.float32(1.0 / 3.0) - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d.astype(np.float32)


def pad_shape(shape: tuple[int, ...], factor: float = 1.3) -> tuple[int, int, int]:
    """A zero-padded FFT shape (>= factor x shape, rounded up to a fast FFT length)."""
    return tuple(int(sfft.next_fast_len(int(np.ceil(n * factor)), real=True)) for n in shape)  # type: ignore


def forward_field(chi: np.ndarray, spacing: tuple[float, float, float], b0: np.ndarray,
                  padding: float = 1.3) -> np.ndarray:
    """Local field (ppm) of a susceptibility map (ppm): IFFT(D(k) FFT(chi)), with zero padding."""
    shape = pad_shape(chi.shape, padding)
    spectrum = sfft.rfftn(chi.astype(np.float32), s=shape, workers=1)
    spectrum *= dipole_kernel(shape, spacing, b0, real=True)
    field = sfft.irfftn(spectrum, s=shape, workers=1)
    return np.ascontiguousarray(field[: chi.shape[0], : chi.shape[1], : chi.shape[2]], dtype=np.float32)


def block_average(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` voxels (partial volume of a coarser acquisition grid).

    The array shape must be divisible by ``factors``.
    """
    fx, fy, fz = factors
    nx, ny, nz = array.shape
    if nx % fx or ny % fy or nz % fz:
        raise ValueError(f"array shape {array.shape} is not divisible by block factors {factors}")
    view = array.reshape(nx // fx, fx, ny // fy, fy, nz // fz, fz)
    if array.dtype == bool:
        counts = view.sum(axis=5, dtype=np.uint8).sum(axis=3, dtype=np.uint16).sum(axis=1, dtype=np.uint16)
        return (counts / np.float32(fx * fy * fz)).astype(np.float32)
    total = view.sum(axis=5, dtype=np.float32).sum(axis=3, dtype=np.float32).sum(axis=1, dtype=np.float32)
    return total / np.float32(fx * fy * fz)


def reconstruct(field: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], b0: np.ndarray,
                method: str, *, tkd_threshold: float = 0.15, regularization: float = 0.05,
                padding: float = 1.3) -> np.ndarray:
    """Invert the dipole model on the masked local field (ppm) -> susceptibility (ppm), masked.

    Methods:
        TKD: thresholded k-space division, 1/D where |D| > t else sign(D)/t (streaking, underestimation).
        Tikhonov: closed-form L2, D / (D^2 + lambda) (smooth, underestimation by ~lambda/D^2).
        GradientL2: closed-form gradient-regularized L2, D / (D^2 + lambda |2 pi k|^2 h^2)
            (h = mean voxel size mm; smoother, like a few CG iterations of a regularized solver).
    The reconstructed map has its mean over the mask removed (QSM is defined up to a constant).
    """
    if method not in RECONSTRUCTIONS:
        raise ValueError(f"unknown reconstruction '{method}'; allowed: {list(RECONSTRUCTIONS)}")
    shape = pad_shape(field.shape, padding)
    spectrum = sfft.rfftn(np.where(mask, field, 0.0).astype(np.float32), s=shape, workers=1)
    d = dipole_kernel(shape, spacing, b0, real=True)
    if method == "TKD":
        t = np.float32(tkd_threshold)
        sign = np.where(d >= 0, np.float32(1.0), np.float32(-1.0))
        inverse = np.where(np.abs(d) > t, 1.0 / np.where(d == 0, 1, d), sign / t).astype(np.float32)
    elif method == "Tikhonov":
        inverse = d / (d * d + np.float32(regularization))
    else:
        kx, ky, kz = _k_grid(shape, spacing, real=True)
        h = float(np.mean(spacing))
        grad2 = (2 * np.pi * h) ** 2 * (kx**2 + ky**2 + kz**2)
        inverse = d / (d * d + np.float32(regularization) * grad2.astype(np.float32) + np.float32(1e-4))
    inverse[0, 0, 0] = 0.0
    spectrum *= inverse
    chi = sfft.irfftn(spectrum, s=shape, workers=1)[: field.shape[0], : field.shape[1], : field.shape[2]]
    chi = np.asarray(chi, dtype=np.float32)
    if mask.any():
        chi = chi - np.float32(chi[mask].mean())
    return np.where(mask, chi, 0.0).astype(np.float32)


def gaussian_smooth(array: np.ndarray, fwhm_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """Gaussian smoothing with a full width at half maximum in mm (0: no-op)."""
    if fwhm_mm <= 0:
        return array
    sigma = [fwhm_mm / 2.3548 / s for s in spacing]
    return ndimage.gaussian_filter(array, sigma=sigma, mode="nearest").astype(np.float32)
