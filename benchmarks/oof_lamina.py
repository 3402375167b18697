"""Out-of-family QSM phantoms ("lamina" family) for benchmarking dentate-nucleus (DN) segmentation.

This generator is deliberately independent of ``dentate_research`` (it imports only numpy, scipy, nibabel and the
standard library; matplotlib only for the optional figure). Its anatomy and reconstruction are designed from the
physics and anatomy facts in ``/work/shared/REFERENCE.md``, so that models trained on the project's own phantoms can
be scored on QSM built in a different way.

Anatomy (all positions in an MNI-like *template* space, millimetres, RAS; physical size = template x head scale):

* brain: a superquadric envelope perturbed by low-order direction harmonics, with a flat temporal/frontal base and a
  tentorial cut; grey-matter ribbon (0.02 ppm) with sulci (CSF ~0 ppm), white matter (-0.03 ppm with smooth
  orientation-like variation), interhemispheric fissure, ventricles, deep grey nuclei as distractors (globus pallidus,
  substantia nigra, red nucleus, caudate, putamen, thalamus), brainstem;
* cerebellum: two hemispheres + vermis below the tentorium (CSF gap), folia texture from a fan of sinusoidal lamellae
  around the fastigium (arbor-vitae-like white-matter branches thinning towards the surface), a white-matter core,
  superior and middle cerebellar peduncles, fourth ventricle;
* DN per side: a kidney-shaped, crenellated (folded) lamina with a hilum notch opening antero-medially; the lamina
  (0.12-0.2 ppm, wall 0.4-0.6 mm) is drawn on a 3x supersampled grid and the interior is lower (0.04-0.09 ppm).
  The truth label is the solid the lamina encloses, minus the hilum notch (what a rater traces);
* veins and sinuses (0.19-0.3 ppm) as tubes: sagittal, straight and transverse sinuses, deep veins, cortical veins,
  and small cerebellar veins passing a few mm from each DN.

Acquisition: the susceptibility map is rasterised on a fine 0.8 mm grid aligned with the acquisition axes, the local
field is computed as ``IFFT(D(k) FFT(chi))`` with ``D = 1/3 - (k.b)^2/|k|^2`` (B0 = world +z, the head is posed with
a random rotation so B0 is tilted relative to the head), then resampled to the site grid (k-space cropping, or a
slab average for thick slices), noise is added to the field, and each site reconstructs differently:

* ``lamA``: 1 mm isotropic, RAS storage, thresholded k-space division (TKD);
* ``lamB``: 0.8 x 0.8 mm in-plane, 2 mm slices along world S-I, LAS storage, Tikhonov inversion with a global gain;
* ``lamC``: 1.2 mm isotropic on an oblique grid (rotated 8-15 degrees), PIR storage, conjugate-gradient solution of
  ``min ||W(D chi - f)||^2 + lambda ||grad chi||^2`` (W = brain mask), and an inferior field-of-view cut on some scans.

Everywhere: a residual background field (random quadratic polynomial, 0.002-0.01 ppm, added to the field before
inversion, so it also produces inversion artefacts at the mask edge), a smooth shading of the map (quadratic,
0.003-0.015 ppm), an arbitrary zero offset (+/- 0.02 ppm), noise added to the field and scaled so that the
reconstructed noise is ~noise_ppm (0.004-0.012 ppm; approximate for the CG site), and masking to the brain (zero
outside). Per-scan generation takes ~2-4 s on one core (full FOV, 0.8 mm fine grid of ~11 M voxels).

Labels: 0 background, 1 = LEFT DN, 2 = RIGHT DN in world RAS coordinates, whatever the storage orientation.

Usage::

    python benchmarks/oof_lamina.py --out work_data/oof_lamina --n-per-site 4 --seed 0 --png
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import fft as sfft

__all__ = ["SITES", "LaminaScan", "make_lamina_scan", "write_lamina_bench", "save_overview_png"]

SITES: tuple[str, ...] = ("lamA", "lamB", "lamC")
FINE_MM = 0.8  # spacing of the fine forward-model grid (mm, isotropic, aligned with the acquisition axes)
DEFAULT_FOV_MM = (168.0, 204.0, 168.0)  # L-R, A-P, S-I extent of the acquisition field of view (mm)
_FOV_STEP_MM = 12.0  # FOV sides are multiples of this, so 0.8, 1.0, 1.2 and 2.0 mm grids tile them exactly
_HEAD_CENTRE = np.array([0.0, -18.0, 2.0])  # template point placed near the FOV centre (mm)
_DN_MNI = {1: np.array([-13.8, -55.8, -36.4]), 2: np.array([13.8, -55.7, -36.4])}  # centre of mass (mm)
_DN_MIDPOINT = np.array([0.0, -55.75, -36.4])


@dataclass(frozen=True)
class _SiteSpec:
    voxel_mm: tuple[float, float, float]  # spacing along the canonical acquisition axes (~R, ~A, ~S), mm
    stored: str  # orientation code of the stored array
    oblique: bool
    slab_axes: tuple[int, ...]  # axes resampled by slab (box) averaging instead of k-space cropping


_SPECS: dict[str, _SiteSpec] = {
    "lamA": _SiteSpec((1.0, 1.0, 1.0), "RAS", False, ()),
    "lamB": _SiteSpec((0.8, 0.8, 2.0), "LAS", False, (2,)),
    "lamC": _SiteSpec((1.2, 1.2, 1.2), "PIR", True, ()),
}


@dataclass
class LaminaScan:
    """One simulated QSM scan.

    Attributes:
        image: susceptibility map (float32, ppm), array in STORED orientation, zero outside the brain mask.
        labels: uint8 truth on the same grid: 0 background, 1 left DN, 2 right DN (world RAS sides).
        affine: 4x4 voxel -> world (mm) matrix of the stored array (may be oblique).
        site: one of :data:`SITES`.
        meta: flat dict of scalars/strings (voxel size mm, orientation code, reconstruction, B0 tilt deg,
            coverage, DN volumes mm^3 per side, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    site: str
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- geometry


def _rot(axis_angle: np.ndarray) -> np.ndarray:
    """Rotation matrix from a rotation vector (radians, Rodrigues)."""
    theta = float(np.linalg.norm(axis_angle))
    if theta < 1e-12:
        return np.eye(3)
    k = np.asarray(axis_angle, float) / theta
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(theta) * K + (1.0 - math.cos(theta)) * (K @ K)


def _unit(v: Any) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


@dataclass
class _Pose:
    """Head pose: world = R @ (s * (template - _HEAD_CENTRE)) + t (mm)."""

    R: np.ndarray
    t: np.ndarray
    s: float

    def to_world(self, p: np.ndarray) -> np.ndarray:
        return self.R @ (self.s * (np.asarray(p, float) - _HEAD_CENTRE)) + self.t

    def template_map(self, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, o) with template = M @ ijk + o for a voxel -> world affine."""
        M = self.R.T @ affine[:3, :3] / self.s
        o = _HEAD_CENTRE + self.R.T @ (affine[:3, 3] - self.t) / self.s
        return M, o


class _Canvas:
    """Fine rasterisation grid: susceptibility (ppm) and brain-mask occupancy, painted with soft edges."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray, pose: _Pose, h_mm: float) -> None:
        self.shape = shape
        self.M, self.o = pose.template_map(affine)
        self.Minv = np.linalg.inv(self.M)
        self.s = pose.s
        self.h = h_mm
        self.chi = np.zeros(shape, np.float32)
        self.mask = np.zeros(shape, np.float32)

    def box(self, lo: Any, hi: Any, pad_vox: int = 2) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the template-space box [lo, hi] (mm), or None when outside the grid."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        v = (self.Minv @ (corners - self.o).T).T
        start = np.floor(v.min(0)).astype(int) - pad_vox
        stop = np.ceil(v.max(0)).astype(int) + pad_vox + 1
        start = np.maximum(start, 0)
        stop = np.minimum(stop, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice], sub: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Template coordinates (mm, float32) of the voxels in `sl` (sub x sub x sub supersampled if sub > 1)."""
        return _grid_coords(self.M, self.o, sl, (sub, sub, sub))

    def soft(self, depth_tpl: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        """Occupancy in [0, 1] from a depth below a surface (template mm, positive inside), 1-voxel ramp."""
        return np.clip(0.5 + (depth_tpl * self.s + margin_mm) / self.h, 0.0, 1.0)

    def paint(self, sl: tuple[slice, slice, slice], occ: np.ndarray, value: Any) -> None:
        c = self.chi[sl]
        c += occ * (value - c)


def _grid_coords(M: np.ndarray, o: np.ndarray, sl: tuple[slice, ...], sub: tuple[int, ...]):
    """Template coordinates (float32 mm) of voxel centres (or sub^3 supersample points) in the index box `sl`."""
    ax = []
    for s_, ns in zip(sl, sub, strict=True):
        idx = np.arange(s_.start, s_.stop, dtype=np.float64)
        if ns > 1:
            idx = (idx[:, None] + (np.arange(ns) + 0.5) / ns - 0.5).ravel()
        ax.append(idx)
    out = []
    for r in range(3):
        # separable: the 1-D terms are float64, the 3-D sum float32
        a0 = (o[r] + M[r, 0] * ax[0]).astype(np.float32)[:, None, None]
        a1 = (M[r, 1] * ax[1]).astype(np.float32)[None, :, None]
        a2 = (M[r, 2] * ax[2]).astype(np.float32)[None, None, :]
        out.append((a0 + a1) + a2)
    return out[0], out[1], out[2]


def _f32(*vals: Any) -> list[Any]:
    """numpy arrays/scalars -> float32 (numpy 2 promotes float32 arrays with float64 scalars to float64)."""
    return [np.asarray(v, np.float32) for v in vals]


def _ellipsoid_depth(X, Y, Z, c, axes, R=None):
    """Approximate depth (template mm, positive inside) below the surface of a (rotated) ellipsoid."""
    c, axes = _f32(c, axes)
    if R is not None:
        R = np.asarray(R, np.float32)
    x, y, z = X - c[0], Y - c[1], Z - c[2]
    if R is not None:
        x, y, z = (R[0, 0] * x + R[1, 0] * y + R[2, 0] * z, R[0, 1] * x + R[1, 1] * y + R[2, 1] * z,
                   R[0, 2] * x + R[1, 2] * y + R[2, 2] * z)
    rho = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2) + 1e-6
    r = np.sqrt(x * x + y * y + z * z)
    return (1.0 - rho) * r / rho


def _paint_ellipsoid(cv: _Canvas, c, axes, value: float, R=None, mask_margin: float | None = None) -> None:
    rad = max(axes) + 2.0
    sl = cv.box(np.asarray(c) - rad, np.asarray(c) + rad)
    if sl is None:
        return
    d = _ellipsoid_depth(*cv.coords(sl), c, axes, R)
    cv.paint(sl, cv.soft(d), value)
    if mask_margin is not None:
        np.maximum(cv.mask[sl], cv.soft(d, mask_margin), out=cv.mask[sl])


def _catmull_rom(points: np.ndarray, n_per: int = 6) -> np.ndarray:
    """Smooth polyline through control points (N, 3) -> (M, 3)."""
    P = np.asarray(points, float)
    P = np.vstack([2 * P[0] - P[1], P, 2 * P[-1] - P[-2]])
    out = []
    t = np.linspace(0.0, 1.0, n_per, endpoint=False)[:, None]
    for i in range(1, len(P) - 2):
        p0, p1, p2, p3 = P[i - 1], P[i], P[i + 1], P[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(P[-2][None])
    return np.vstack(out)


@dataclass
class _Vein:
    points: np.ndarray  # control points, template mm
    radius_mm: float  # physical radius
    chi: float  # ppm


def _paint_vein(cv: _Canvas, vein: _Vein) -> None:
    pts = _catmull_rom(vein.points)
    r_t = vein.radius_mm / cv.s
    pad = r_t + 2 * cv.h / cv.s
    sl = cv.box(pts.min(0) - pad, pts.max(0) + pad, pad_vox=1)
    if sl is None:
        return
    occ = np.zeros(tuple(s.stop - s.start for s in sl), np.float32)
    for a, b in zip(pts[:-1].astype(np.float32), pts[1:].astype(np.float32), strict=True):
        sub = cv.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad, pad_vox=1)
        if sub is None:
            continue
        sub = tuple(slice(max(s.start, o.start), min(s.stop, o.stop)) for s, o in zip(sub, sl, strict=True))
        if any(s.stop <= s.start for s in sub):
            continue
        X, Y, Z = cv.coords(sub)
        ab = b - a
        L2 = float(ab @ ab) + 1e-9
        t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / L2, 0.0, 1.0)
        d = np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2)
        o = np.clip(0.5 + (vein.radius_mm - d * cv.s) / cv.h, 0.0, 1.0)
        loc = tuple(slice(s.start - o_.start, s.stop - o_.start) for s, o_ in zip(sub, sl, strict=True))
        np.maximum(occ[loc], o, out=occ[loc])
    cv.paint(sl, occ, vein.chi)


# --------------------------------------------------------------------------------------------------- the DN


@dataclass
class _Dentate:
    """One dentate nucleus: crenellated kidney-shaped lamina with an antero-medial hilum notch.

    Local frame columns of ``R`` (template space): u = long axis (anterior, tilted medially and upwards),
    v = medial, w = superior. Sizes in physical mm; the shape is defined in coordinates normalised by ``axes``.
    """

    side: int
    centre: np.ndarray  # template mm
    R: np.ndarray
    axes: np.ndarray  # semi-axes (mm, physical)
    bend: float
    cren_dirs: np.ndarray  # (n, 3) unit vectors
    cren_k: np.ndarray
    cren_phase: np.ndarray
    cren_amp: float
    hilum: np.ndarray  # unit vector, normalised local space
    e1: np.ndarray
    e2: np.ndarray
    apex: float
    tan1: float
    tan2: float
    lip_inner: float
    wall_mm: float
    chi_lam: float
    chi_int: float
    tex_dir: np.ndarray
    tex_phase: float
    vein_rand: np.ndarray  # uniform(0, 1) draws for the two nearby veins

    def normalised(self, X, Y, Z, s: float):
        c, R, sc = _f32(self.centre, self.R, s / self.axes)
        x, y, z = X - c[0], Y - c[1], Z - c[2]
        un = (R[0, 0] * x + R[1, 0] * y + R[2, 0] * z) * sc[0]
        vn = (R[0, 1] * x + R[1, 1] * y + R[2, 1] * z) * sc[1]
        wn = (R[0, 2] * x + R[1, 2] * y + R[2, 2] * z) * sc[2]
        return un, vn, wn

    def shape_fields(self, un, vn, wn):
        """(f, g, r, texture) in normalised space: f < 0 inside the crenellated bag, g < 0 inside the hilum notch."""
        v2 = vn + self.bend * un * un
        r = np.sqrt(un * un + v2 * v2 + wn * wn) + 1e-6
        c = np.zeros_like(r)
        dirs, ks, phs = _f32(self.cren_dirs, self.cren_k, self.cren_phase)
        for d, k, ph in zip(dirs, ks, phs, strict=True):
            c += np.sin(k * (d[0] * un + d[1] * v2 + d[2] * wn) / r + ph)
        f = r / (1.0 + self.cren_amp * np.tanh(c * np.float32(0.8))) - 1.0  # saturated: battlement-like folds
        h, e1, e2, td = _f32(self.hilum, self.e1, self.e2, self.tex_dir)
        yu, yv, yw = un - self.apex * h[0], v2 - self.apex * h[1], wn - self.apex * h[2]
        ah = yu * h[0] + yv * h[1] + yw * h[2]
        a1 = (yu * e1[0] + yv * e1[1] + yw * e1[2]) / self.tan1
        a2 = (yu * e2[0] + yv * e2[1] + yw * e2[2]) / self.tan2
        g = np.sqrt(a1 * a1 + a2 * a2) - ah
        tex = np.sin(9.0 * (td[0] * un + td[1] * v2 + td[2] * wn) / r + self.tex_phase)
        return f, g, r, tex

    def solid(self, X, Y, Z, s: float) -> np.ndarray:
        f, g, _, _ = self.shape_fields(*self.normalised(X, Y, Z, s))
        return (f < 0) & (g > 0)

    def half_widths(self, Q: np.ndarray) -> np.ndarray:
        """Half-extent (physical mm) along the axes whose directions (in local u, v, w) are the rows of Q."""
        m = 1.0 + 1.2 * self.cren_amp
        a = self.axes * np.array([m, m + self.bend, m])
        return np.sqrt((Q**2) @ (a**2)) + 1.0


def _normalised_volume(dn: _Dentate, n: int = 56) -> float:
    """Volume of the label solid in normalised units (physical volume = this x prod(axes))."""
    g = np.linspace(-1.8, 1.8, n, dtype=np.float32)
    un, vn, wn = np.meshgrid(g, g, g, indexing="ij")
    f, gg, _, _ = dn.shape_fields(un, vn, wn)
    return float(np.count_nonzero((f < 0) & (gg > 0))) * (3.6 / (n - 1)) ** 3


def _local_axes(dn: _Dentate, pose: _Pose, rot_acq: np.ndarray) -> np.ndarray:
    """Rows: acquisition axes expressed in the DN local frame (orthonormal)."""
    return (dn.R.T @ pose.R.T @ rot_acq).T


def _paint_dentate(cv: _Canvas, dn: _Dentate, pose: _Pose, rot_acq: np.ndarray) -> dict[str, float]:
    """Rasterise the DN (3x supersampled) into the canvas; returns the true mean chi (ppm) over the solid."""
    sub = 3
    Q = _local_axes(dn, pose, rot_acq)
    hw = dn.half_widths(Q) / pose.s  # template mm along each acquisition axis -> voxel half widths below
    vc = cv.Minv @ (dn.centre - cv.o)
    half_vox = hw * pose.s / cv.h
    start = np.maximum(np.floor(vc - half_vox).astype(int), 0)
    stop = np.minimum(np.ceil(vc + half_vox).astype(int) + 1, cv.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    X, Y, Z = cv.coords(sl, sub)
    f, g, r, tex = dn.shape_fields(*dn.normalised(X, Y, Z, pose.s))
    del X, Y, Z
    hs = cv.h / sub
    gf = np.gradient(f, hs)
    df = f / (np.sqrt(gf[0] ** 2 + gf[1] ** 2 + gf[2] ** 2) + 1e-6)  # signed distance to the bag surface (mm)
    del gf
    gg = np.gradient(g, hs)
    dg = g / (np.sqrt(gg[0] ** 2 + gg[1] ** 2 + gg[2] ** 2) + 1e-6)  # signed distance to the notch wall (mm)
    del gg
    w2 = dn.wall_mm / 2.0

    def ramp(x: np.ndarray) -> np.ndarray:
        return np.clip(0.5 + x / hs, 0.0, 1.0)

    # lamina on the inner side of the surface (outer edge = label boundary), open at the notch, with lips
    shell = ramp(w2 - np.abs(df + w2)) * ramp(dg)
    lips = ramp(w2 - np.abs(dg - w2)) * ramp(-df) * ramp((r - dn.lip_inner) * 8.0)
    lam = np.maximum(shell, lips)
    solid = ((f < 0) & (g > 0)).astype(np.float32)
    chi_l = dn.chi_lam * (1.0 + 0.1 * tex)
    val = lam * chi_l + solid * (1.0 - lam) * dn.chi_int
    anyo = lam + solid * (1.0 - lam)
    true_mean = float((val * solid).sum() / max(solid.sum(), 1.0))
    lam_frac = float((lam * solid).sum() / max(solid.sum(), 1.0))
    n = [s.stop - s.start for s in sl]

    def block(a: np.ndarray) -> np.ndarray:
        return a.reshape(n[0], sub, n[1], sub, n[2], sub).mean(axis=(1, 3, 5), dtype=np.float32)

    a_fine, v_fine = block(anyo), block(val)
    c = cv.chi[sl]
    c *= 1.0 - a_fine
    c += v_fine
    return {"true_mean_ppm": true_mean, "lamina_fraction": lam_frac}


# --------------------------------------------------------------------------------------------------- subject


@dataclass
class _Subject:
    age: float
    brain_axes: np.ndarray
    brain_exp: float
    env_terms: list[tuple[np.ndarray, float, float]]
    gm_mm: float
    sulc_terms: list[tuple[np.ndarray, float]]
    sulc_depth: float
    wm_terms: list[tuple[np.ndarray, float]]
    tent_z0: float
    tent_gap: float
    cb_hemi: list[tuple[np.ndarray, np.ndarray]]
    vermis: tuple[np.ndarray, np.ndarray]
    folia_k: float
    folia_phase: np.ndarray
    nuclei: list[tuple[np.ndarray, np.ndarray, float, float]]  # centre, axes, chi, yaw deg
    csf: list[tuple[np.ndarray, np.ndarray, float]]  # centre, axes, yaw deg
    chi: dict[str, float]
    dns: dict[int, _Dentate]
    dn_target_mm3: dict[int, float]
    veins: list[_Vein]


def _env_radius(sub: _Subject, direction: np.ndarray) -> float:
    """Distance (template mm) from the brain centre to the envelope along a unit direction."""
    a = sub.brain_axes
    n = sub.brain_exp
    F0 = (np.sum(np.abs(direction / a) ** n)) ** (1.0 / n)
    eps = sum(b * math.sin(float(w @ direction) + ph) for w, b, ph in sub.env_terms)
    return float((1.0 + eps) / F0)


def _tent_z(sub: _Subject, x, y):
    """Height (template mm) of the tentorium: a ridge highest in the midline, sloping laterally and posteriorly."""
    return sub.tent_z0 - 0.26 * np.abs(x) - 0.1 * np.maximum(-y - 55.0, 0.0)


def _make_dentate(rng: np.random.Generator, side: int, centre: np.ndarray, target_mm3: float, age_frac: float,
                  asym: float) -> _Dentate:
    sgn = -1.0 if side == 1 else 1.0
    psi = math.radians(rng.uniform(20, 35))
    u = np.array([-sgn * math.sin(psi), math.cos(psi), 0.0])
    v = np.array([-sgn * math.cos(psi), -math.sin(psi), 0.0])
    w = np.array([0.0, 0.0, 1.0])
    pitch = math.radians(rng.uniform(8, 22))
    u, w = u * math.cos(pitch) + w * math.sin(pitch), -u * math.sin(pitch) + w * math.cos(pitch)
    roll = _rot(u * math.radians(rng.normal(0, 6)))
    R = np.column_stack([roll @ u, roll @ v, roll @ w])
    ncr = 4
    dirs = np.array([_unit(rng.normal(size=3)) for _ in range(ncr)])
    h = _unit([rng.uniform(0.35, 0.6), 0.85, rng.uniform(0.05, 0.3)])
    e1 = _unit(np.cross([0.0, 0.0, 1.0], h))
    e2 = np.cross(h, e1)
    dn = _Dentate(
        side=side, centre=centre, R=R, axes=np.ones(3), bend=rng.uniform(0.12, 0.28), cren_dirs=dirs,
        cren_k=rng.uniform(15.0, 21.0, ncr), cren_phase=rng.uniform(0, 2 * np.pi, ncr),
        cren_amp=rng.uniform(0.13, 0.17), hilum=h, e1=e1, e2=e2, apex=rng.uniform(0.05, 0.3),
        tan1=math.tan(math.radians(rng.uniform(38, 50))), tan2=math.tan(math.radians(rng.uniform(45, 60))),
        lip_inner=rng.uniform(0.4, 0.55), wall_mm=rng.uniform(0.4, 0.6),
        chi_lam=float(np.clip((0.125 + 0.06 * age_frac + rng.normal(0, 0.008)) * asym, 0.12, 0.2)),
        chi_int=float(np.clip((0.045 + 0.035 * age_frac + rng.normal(0, 0.006)) * asym, 0.04, 0.09)),
        tex_dir=_unit(rng.normal(size=3)), tex_phase=rng.uniform(0, 2 * np.pi), vein_rand=rng.uniform(size=10),
    )
    ratio = np.array([1.0, rng.uniform(0.55, 0.68), rng.uniform(0.62, 0.78)])
    vn = _normalised_volume(dn)
    a_u = (target_mm3 / (vn * ratio[1] * ratio[2])) ** (1.0 / 3.0)
    dn.axes = a_u * ratio
    return dn


def _dn_veins(dn: _Dentate, s: float) -> list[_Vein]:
    """Two small veins a few mm (physical) outside the DN: one along the medial (hilum) side, one over the top."""
    a = dn.axes * (1.0 + 1.2 * dn.cren_amp)
    u = dn.vein_rand

    def tpl(q: np.ndarray) -> np.ndarray:
        return dn.centre + (dn.R @ q.T).T / s

    gap1, gap2 = 2.0 + 1.5 * u[0], 2.5 + 1.5 * u[1]
    q1 = np.array([[-2 + 5 * u[2], a[1] + gap1 + 1.5, a[2] + 7.0],
                   [-1 + 4 * u[3], a[1] + gap1, 0.0],
                   [-4 + 4 * u[4], a[1] + gap1 + 1.0, -a[2] - 6.0]])
    q2 = np.array([[-a[0] - 6.0, -0.6 * a[1], a[2] + gap2 + 2.0],
                   [0.0, -0.5 * u[5] * a[1], a[2] + gap2],
                   [a[0] + 5.0, 0.2 * a[1], a[2] + gap2 + 3.0]])
    return [_Vein(tpl(q1), 0.5 + 0.3 * u[6], 0.19 + 0.11 * u[7]),
            _Vein(tpl(q2), 0.5 + 0.4 * u[8], 0.19 + 0.11 * u[9])]


def _make_subject(seed: int) -> _Subject:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    age = float(rng.uniform(11, 64))
    af = (age - 11.0) / 53.0
    brain_axes = np.array([68.0, 86.0, 70.0]) * rng.uniform(0.97, 1.03, 3)
    env_terms = [(_unit(rng.normal(size=3)) * rng.uniform(1.5, 3.0), rng.uniform(0.01, 0.025),
                  rng.uniform(0, 2 * np.pi)) for _ in range(3)]
    sulc_terms = [(_unit(rng.normal(size=3)) * (2 * np.pi / rng.uniform(24, 32)), rng.uniform(0, 2 * np.pi))
                  for _ in range(3)]
    wm_terms = [(_unit(rng.normal(size=3)) * (2 * np.pi / rng.uniform(40, 80)), rng.uniform(0, 2 * np.pi))
                for _ in range(2)]
    cb_hemi = []
    for sgn in (-1.0, 1.0):
        c = np.array([sgn * rng.uniform(22, 26), rng.uniform(-64, -60), rng.uniform(-40, -37)])
        cb_hemi.append((c, np.array([27.0, 26.0, 21.0]) * rng.uniform(0.95, 1.05, 3)))
    vermis = (np.array([0.0, -63.0, -31.0]), np.array([10.0, 23.0, 22.0]) * rng.uniform(0.95, 1.05, 3))

    def j(x: float, rel: float = 0.12) -> float:
        return float(x * rng.uniform(1 - rel, 1 + rel))

    chi = {
        "wm": j(-0.03, 0.15), "gm": j(0.02, 0.2), "csf": float(rng.uniform(-0.005, 0.008)),
        "cb_gm": j(0.012, 0.3), "cb_wm": j(-0.028, 0.15), "stem": j(-0.015, 0.25),
    }
    iron = 0.9 + 0.25 * af  # age-like scaling of iron-rich nuclei
    nuclei = []
    for sgn in (-1.0, 1.0):
        nuclei += [
            (np.array([sgn * 25.0, 1.0, 1.0]), np.array([5.5, 15.0, 9.0]), j(0.038) * iron, sgn * 8.0),  # putamen
            (np.array([sgn * 13.0, 13.0, 9.0]), np.array([5.0, 9.0, 8.0]), j(0.044) * iron, sgn * 10.0),  # caudate
            (np.array([sgn * 15.0, -8.0, 19.0]), np.array([4.0, 14.0, 5.0]), j(0.04) * iron, sgn * 12.0),  # body
            (np.array([sgn * 11.0, -18.0, 7.0]), np.array([8.0, 14.0, 8.0]), j(0.02), sgn * 15.0),  # thalamus
            (np.array([sgn * 19.0, -3.0, -1.0]), np.array([3.5, 8.0, 5.5]), j(0.131) * iron, sgn * 10.0),  # GP
            (np.array([sgn * 10.5, -17.0, -11.0]), np.array([3.0, 8.0, 2.6]), j(0.111) * iron, sgn * 25.0),  # SN
            (np.array([sgn * 11.0, -13.0, -5.0]), np.array([2.5, 5.0, 2.0]), j(0.1) * iron, sgn * 30.0),  # STN
            (np.array([sgn * 5.0, -19.0, -8.0]), np.array([3.2, 3.6, 3.5]), j(0.1) * iron, 0.0),  # red nucleus
        ]
    csf = []
    for sgn in (-1.0, 1.0):
        csf += [
            (np.array([sgn * 12.0, -10.0, 19.0]), np.array([5.0, 24.0, 7.0]) * rng.uniform(0.8, 1.25), sgn * 6.0),
            (np.array([sgn * 13.0, 16.0, 12.0]), np.array([4.0, 10.0, 7.0]), sgn * 12.0),
            (np.array([sgn * 24.0, -42.0, 9.0]), np.array([5.0, 12.0, 6.0]), -sgn * 20.0),
        ]
    csf.append((np.array([0.0, -12.0, 3.0]), np.array([2.0, 12.0, 8.0]), 0.0))

    # dentate nuclei: jittered MNI centres, small left/right asymmetry
    v_mean = rng.uniform(700, 1100)
    dv = rng.uniform(-0.06, 0.06)
    shift = rng.normal(0, [1.2, 2.2, 2.2]).clip([-2.5, -5, -5], [2.5, 5, 5])
    dns, targets = {}, {}
    for side, sgn in ((1, -1.0), (2, 1.0)):
        own = rng.normal(0, 1.0, 3).clip(-2, 2)
        centre = _DN_MNI[side] + shift * np.array([sgn, 1.0, 1.0]) + own
        target = float(np.clip(v_mean * (1.0 + (dv if side == 1 else -dv)), 650, 1150))
        targets[side] = target
        dns[side] = _make_dentate(rng, side, centre, target, af, float(rng.uniform(0.95, 1.05)))

    sub = _Subject(
        age=age, brain_axes=brain_axes, brain_exp=float(rng.uniform(2.2, 2.6)), env_terms=env_terms,
        gm_mm=float(rng.uniform(2.3, 3.0)), sulc_terms=sulc_terms, sulc_depth=float(rng.uniform(12, 18)),
        wm_terms=wm_terms, tent_z0=float(rng.uniform(-7, -3)), tent_gap=float(rng.uniform(1.8, 3.0)),
        cb_hemi=cb_hemi, vermis=vermis, folia_k=float(rng.uniform(30, 40)),
        folia_phase=rng.uniform(0, 2 * np.pi, 4), nuclei=nuclei, csf=csf, chi=chi, dns=dns,
        dn_target_mm3=targets, veins=[],
    )
    sub.veins = _make_veins(rng, sub)
    return sub


def _make_veins(rng: np.random.Generator, sub: _Subject) -> list[_Vein]:
    def vchi() -> float:
        return float(rng.uniform(0.19, 0.3))

    veins: list[_Vein] = []
    # superior sagittal sinus: along the midline surface from frontal to occipital
    pts = []
    for ang in np.linspace(math.radians(20), math.radians(200), 9):
        d = np.array([0.0, math.cos(ang), math.sin(ang)])
        pts.append(_HEAD_CENTRE + d * (_env_radius(sub, d) + 1.0))
    veins.append(_Vein(np.array(pts), rng.uniform(2.5, 3.5), vchi()))
    torcula = np.array([0.0, -97.0, float(_tent_z(sub, 0.0, -97.0)) - 1.0])
    galen = np.array([0.0, -43.0, 6.0])
    veins.append(_Vein(np.array([galen, [0.0, -58.0, float(_tent_z(sub, 0.0, -58.0)) + 1.5],
                                 [0.0, -78.0, float(_tent_z(sub, 0.0, -78.0)) + 1.0], torcula]),
                       rng.uniform(1.8, 2.5), vchi()))
    for sgn in (-1.0, 1.0):
        tz = [float(_tent_z(sub, sgn * x, y)) for x, y in ((25, -94), (45, -80))]
        veins.append(_Vein(np.array([torcula, [sgn * 25, -94, tz[0] - 1.0], [sgn * 45, -80, tz[1] - 1.5],
                                     [sgn * 52, -60, -32], [sgn * 47, -46, -48]]), rng.uniform(2.5, 3.5), vchi()))
        veins.append(_Vein(np.array([[sgn * 2.5, 0, 18], [sgn * 3, -20, 15], [sgn * 2, -36, 9], galen]),
                           rng.uniform(0.9, 1.3), vchi()))  # internal cerebral vein
        veins.append(_Vein(np.array([[sgn * 21, 2, -13], [sgn * 19, -18, -7], [sgn * 11, -34, 1], galen]),
                           rng.uniform(0.8, 1.1), vchi()))  # basal vein
        veins.append(_Vein(np.array([[sgn * 16, -16, 17], [sgn * 12, -4, 19], [sgn * 4, 2, 18]]),
                           rng.uniform(0.6, 0.9), vchi()))  # thalamostriate vein
    veins.append(_Vein(np.array([[0, -46, -14], [0, -50, -6], [0, -45, 2], galen]), rng.uniform(0.6, 0.9),
                       vchi()))  # precentral cerebellar vein
    veins.append(_Vein(np.array([[0, -55, -7], [0, -68, -8], [0, -82, -12], [0, -92, -8]]),
                       rng.uniform(0.7, 1.0), vchi()))  # superior vermian vein
    for _ in range(6):  # cortical veins along the upper convexity
        d0 = _unit(rng.normal(size=3) * [1, 1, 0.5] + [0, 0, 0.8])
        axis = _unit(np.cross(d0, rng.normal(size=3)))
        pts = []
        for a in np.linspace(0, math.radians(rng.uniform(25, 45)), 6):
            d = _rot(axis * a) @ d0
            pts.append(_HEAD_CENTRE + d * (_env_radius(sub, d) - 0.8))
        veins.append(_Vein(np.array(pts), rng.uniform(0.7, 1.3), vchi()))
    return veins


# --------------------------------------------------------------------------------------------------- rasterise


def _paint_cerebrum(cv: _Canvas, sub: _Subject) -> None:
    """Cerebrum (envelope above a base + temporal lobes), cortex with sulci, fissure; CSF elsewhere in the head."""
    full = tuple(slice(0, n) for n in cv.shape)
    X, Y, Z = cv.coords(full)
    hc, a = _f32(_HEAD_CENTRE, sub.brain_axes)
    n = sub.brain_exp
    x, y, z = X - hc[0], Y - hc[1], Z - hc[2]
    r = x * x
    t = y * y
    r += t
    np.multiply(z, z, out=t)
    r += t
    np.sqrt(r, out=r)
    r += np.float32(1e-3)
    F = np.abs(x)
    F *= np.float32(1.0 / a[0])
    F **= np.float32(n)
    for comp, ai in ((y, a[1]), (z, a[2])):
        np.abs(comp, out=t)
        t *= np.float32(1.0 / ai)
        t **= np.float32(n)
        F += t
    F **= np.float32(1.0 / n)
    np.maximum(F, np.float32(1e-4), out=F)
    # direction-dependent perturbation of the surface: depth = r * ((1 + eps) - F) / F
    inv_r = np.float32(1.0) / r
    onep = np.ones_like(r)
    t2 = np.empty_like(r)
    for w, b, ph in sub.env_terms:
        np.multiply(x, np.float32(w[0]), out=t)
        np.multiply(y, np.float32(w[1]), out=t2)
        t += t2
        np.multiply(z, np.float32(w[2]), out=t2)
        t += t2
        t *= inv_r
        t += np.float32(ph)
        np.sin(t, out=t)
        t *= np.float32(b)
        onep += t
    del x, y, z, inv_r, t2
    depth_env = onep
    depth_env -= F
    depth_env *= r
    depth_env /= F
    del F, r
    # base: frontal floor -26 mm, central floor -14 mm (open to the brainstem), tentorium posteriorly
    w_post = np.clip((-36.0 - Y) / 8.0, 0.0, 1.0)
    w_front = np.clip((Y - 8.0) / 14.0, 0.0, 1.0)
    z_floor = (1.0 - w_post) * (-14.0 - 12.0 * w_front)
    z_floor += w_post * (_tent_z(sub, X, Y) + np.float32(sub.tent_gap / 2))
    del w_post, w_front
    depth = np.subtract(Z, z_floor, out=z_floor)
    env_floor = np.minimum(depth_env, depth + np.float32(3.0))
    np.minimum(depth_env, depth, out=depth)
    for sgn in (-1.0, 1.0):  # temporal lobes, bounded by the envelope
        c, ax = np.array([sgn * 40.0, -13.0, -21.0]), np.array([20.0, 36.0, 19.0])
        sl = cv.box(c - ax - 2, c + ax + 2)
        if sl is None:
            continue
        dt = np.minimum(_ellipsoid_depth(X[sl], Y[sl], Z[sl], c, ax, _rot([0, 0, -sgn * math.radians(12)])),
                        depth_env[sl])
        np.maximum(depth[sl], dt, out=depth[sl])
        np.maximum(env_floor[sl], dt, out=env_floor[sl])
    del depth_env
    np.maximum(cv.mask, cv.soft(env_floor, 1.5), out=cv.mask)
    del env_floor
    # inside the head but outside the cerebrum (tentorial gap, cisterns) is CSF; work on brain voxels only
    chi = np.full(cv.shape, sub.chi["csf"], np.float32)
    idx = np.flatnonzero(depth.ravel() > -cv.h / cv.s)
    Xs, Ys, Zs = X.ravel()[idx], Y.ravel()[idx], Z.ravel()[idx]
    dphys = depth.ravel()[idx] * np.float32(cv.s)
    del X, Y, Z, depth
    wm = np.full(idx.shape, sub.chi["wm"], np.float32)  # white matter with smooth orientation-like variation
    for w, ph in sub.wm_terms:
        w = w.astype(np.float32)
        wm += np.float32(0.006) * np.sin(w[0] * Xs + w[1] * Ys + w[2] * Zs + np.float32(ph))
    gpat = np.zeros_like(Xs)  # sulci: zero sets of a sum of plane waves, lined by grey matter
    for w, ph in sub.sulc_terms:
        w = w.astype(np.float32)
        gpat += np.sin(w[0] * Xs + w[1] * Ys + w[2] * Zs + np.float32(ph))
    np.abs(gpat, out=gpat)
    in_sulc = np.clip((sub.sulc_depth - dphys) / 3.0, 0.0, 1.0)
    gm_w = np.maximum(np.clip(0.5 + (sub.gm_mm - dphys) / cv.h, 0, 1), in_sulc * np.clip((0.9 - gpat) / 0.3, 0, 1))
    csf_w = in_sulc * np.clip((0.16 - gpat) / 0.08, 0, 1)
    # interhemispheric fissure above the corpus callosum and at the frontal/occipital poles
    ax_ = np.abs(Xs) * np.float32(cv.s)
    fis = np.clip((Zs - 24.0) / 4.0, 0, 1) + np.clip((Ys - 36.0) / 4.0, 0, 1) + np.clip((-46.0 - Ys) / 4.0, 0, 1)
    np.minimum(fis, 1.0, out=fis)
    np.maximum(gm_w, fis * np.clip(0.5 + (3.5 - ax_) / cv.h, 0, 1), out=gm_w)
    np.maximum(csf_w, fis * np.clip(0.5 + (0.9 - ax_) / cv.h, 0, 1), out=csf_w)
    val = wm + gm_w * (sub.chi["gm"] - wm)
    val += csf_w * (sub.chi["csf"] - val)
    occ = np.clip(0.5 + dphys / cv.h, 0.0, 1.0)
    chi.ravel()[idx] = occ * val + (1.0 - occ) * sub.chi["csf"]
    cv.chi = chi


def _paint_cerebellum(cv: _Canvas, sub: _Subject) -> None:
    sl = cv.box([-60.0, -100.0, -75.0], [60.0, -26.0, 0.0])
    if sl is None:
        return
    X, Y, Z = cv.coords(sl)
    d = _ellipsoid_depth(X, Y, Z, *sub.vermis)
    for c, ax in sub.cb_hemi:
        d = np.maximum(d, _ellipsoid_depth(X, Y, Z, c, ax))
    d = np.minimum(d, _tent_z(sub, X, Y) - sub.tent_gap / 2 - Z)
    occ = cv.soft(d)
    np.maximum(cv.mask[sl], cv.soft(d, 1.5), out=cv.mask[sl])
    # folia: lamellae fanning out around the fastigium (sagittal angle), white-matter branches thin outwards
    yy, zz = Y + 54.0, Z + 33.0
    theta = np.arctan2(zz, -yy)
    rr = np.sqrt(yy * yy + zz * zz + 0.15 * X * X)
    ph = [float(v) for v in sub.folia_phase]
    warp = 1.3 * np.sin(0.11 * X + ph[0]) + 0.9 * np.sin(0.07 * rr + 0.05 * X + ph[1]) + 0.5 * np.sin(
        0.2 * X + 0.1 * Y + ph[2])
    s = np.sin(sub.folia_k * theta + warp)
    dphys = d * cv.s
    thr = 1.0 - 1.7 * np.clip((dphys - 1.5) / 12.0, 0.0, 0.55) - 2.2 * np.clip((12.0 - rr) / 5.0, 0.0, 1.0)
    wm_w = np.clip((s - thr) / 0.35 + 0.5, 0.0, 1.0)
    csf_w = np.clip((-s - 0.9) / 0.06, 0.0, 1.0) * np.clip((6.0 - dphys) / 2.0, 0.0, 1.0)
    val = sub.chi["cb_gm"] + wm_w * (sub.chi["cb_wm"] - sub.chi["cb_gm"])
    val += csf_w * (sub.chi["csf"] - val)
    cv.paint(sl, occ, val)


def _paint_tube(cv: _Canvas, p0, p1, radius_mm: float, value: float) -> None:
    _paint_vein(cv, _Vein(np.array([p0, (np.asarray(p0) + np.asarray(p1)) / 2, p1], float), radius_mm, value))


def _rasterise(cv: _Canvas, sub: _Subject, pose: _Pose, rot_acq: np.ndarray) -> dict[int, dict[str, float]]:
    _paint_cerebrum(cv, sub)
    for c, ax, yaw in sub.csf:
        _paint_ellipsoid(cv, c, ax, sub.chi["csf"], _rot([0, 0, math.radians(yaw)]))
    for c, ax, val, yaw in sub.nuclei:
        _paint_ellipsoid(cv, c, ax, val, _rot([0, 0, math.radians(yaw)]))
    stem = sub.chi["stem"]
    _paint_ellipsoid(cv, [0.0, -22.0, -9.0], [13.0, 11.0, 9.0], stem, mask_margin=1.5)  # midbrain
    _paint_ellipsoid(cv, [0.0, -28.0, -31.0], [14.0, 13.0, 13.0], stem, mask_margin=1.5)  # pons
    _paint_ellipsoid(cv, [0.0, -39.0, -54.0], [9.0, 9.0, 16.0], stem, mask_margin=1.5)  # medulla
    for c, ax, yaw in sub.csf:  # repaint ventricles over the brainstem overlap
        if abs(c[0]) < 1:
            _paint_ellipsoid(cv, c, ax, sub.chi["csf"], _rot([0, 0, math.radians(yaw)]))
    _paint_cerebellum(cv, sub)
    cbw = sub.chi["cb_wm"]
    for side, sgn in ((1, -1.0), (2, 1.0)):
        dn = sub.dns[side]
        _paint_ellipsoid(cv, dn.centre + [sgn * 2.5, 0.0, 0.5], [13.0, 15.0, 11.0], cbw,
                         _rot([0, 0, -sgn * math.radians(25)]))  # corpus medullare around the DN
        _paint_tube(cv, [sgn * 12, -31, -30], [sgn * 23, -50, -35], 5.0, cbw)  # middle cerebellar peduncle
        _paint_tube(cv, dn.centre + [-sgn * 5, 5, 3], [sgn * 4, -30, -13], 2.2, cbw)  # superior cerebellar peduncle
    _paint_ellipsoid(cv, [0.0, -47.0, -31.0], [5.5, 3.5, 9.0], sub.chi["csf"], _rot([math.radians(-20), 0, 0]))
    out = {side: _paint_dentate(cv, sub.dns[side], pose, rot_acq) for side in (1, 2)}
    for vein in sub.veins + _dn_veins(sub.dns[1], pose.s) + _dn_veins(sub.dns[2], pose.s):
        _paint_vein(cv, vein)
    cv.chi *= np.clip(cv.mask * 4.0, 0.0, 1.0)  # nothing outside the head envelope (background removed)
    return out


# --------------------------------------------------------------------------------------------------- physics


def _dipole_kernel(shape: tuple[int, ...], spacing: Any, b: np.ndarray) -> np.ndarray:
    """D(k) = 1/3 - (k.b)^2/|k|^2 on the rfft grid of `shape` (spacing in mm); D(0) = 0."""
    k0 = np.fft.fftfreq(shape[0], spacing[0])[:, None, None]
    k1 = np.fft.fftfreq(shape[1], spacing[1])[None, :, None]
    k2 = np.fft.rfftfreq(shape[2], spacing[2])[None, None, :]
    kb = (b[0] * k0 + b[1] * k1).astype(np.float32) + np.float32(b[2]) * k2.astype(np.float32)
    kk = (k0 * k0 + k1 * k1).astype(np.float32) + (k2 * k2).astype(np.float32)
    kk[0, 0, 0] = 1.0
    D = np.float32(1.0 / 3.0) - kb * kb / kk
    D[0, 0, 0] = 0.0
    return D


def _laplacian_symbol(shape: tuple[int, ...], spacing: Any) -> np.ndarray:
    """|G(k)|^2 of forward differences (mm^-2) on the rfft grid."""
    out = None
    for ax, (n, h) in enumerate(zip(shape, spacing, strict=True)):
        m = n // 2 + 1 if ax == 2 else n
        sym = ((2.0 - 2.0 * np.cos(2 * np.pi * np.arange(m) / n)) / h**2).astype(np.float32)
        shp = [1, 1, 1]
        shp[ax] = m
        sym = sym.reshape(shp)
        out = sym if out is None else out + sym
    return out  # type: ignore[return-value]


def _kcrop(spec: np.ndarray, fine_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Band-limit an rfft spectrum of a fine grid to a coarser grid with the same FOV; returns the image."""
    idx = []
    for ax in range(2):
        f = np.round(np.fft.fftfreq(out_shape[ax]) * out_shape[ax]).astype(int)
        idx.append(f % fine_shape[ax])
    m2 = out_shape[2] // 2 + 1
    G = spec[np.ix_(idx[0], idx[1], np.arange(m2))].copy()
    for ax in range(2):
        if out_shape[ax] % 2 == 0:
            sl = [slice(None)] * 3
            sl[ax] = out_shape[ax] // 2
            G[tuple(sl)] = 0
    if out_shape[2] % 2 == 0:
        G[..., -1] = 0
    scale = np.prod(out_shape) / np.prod(fine_shape)
    return (sfft.irfftn(G, s=out_shape, workers=1) * scale).astype(np.float32)


def _slab_average(arr: np.ndarray, axis: int, h: float, H: float, n_out: int) -> np.ndarray:
    """Box (slab) average along `axis` from fine slices of thickness h to slabs of thickness H (same start)."""
    arr = np.moveaxis(arr, axis, 0)
    out = np.zeros((n_out,) + arr.shape[1:], np.float32)
    for i in range(n_out):
        lo, hi = i * H, (i + 1) * H
        for j in range(int(math.floor(lo / h)), min(int(math.ceil(hi / h)), arr.shape[0])):
            w = (min(hi, (j + 1) * h) - max(lo, j * h)) / H
            if w > 1e-9:
                out[i] += np.float32(w) * arr[j]
    return np.moveaxis(out, 0, axis)


def _rdot(X: np.ndarray, Y: np.ndarray, even_last: bool) -> float:
    """Real-space inner product of two real images from their rfft half spectra (up to 1/N)."""
    tot = 2.0 * float(np.vdot(X.view(np.float32).ravel(), Y.view(np.float32).ravel()))
    for e in (0, -1) if even_last else (0,):
        xe, ye = np.ascontiguousarray(X[..., e]), np.ascontiguousarray(Y[..., e])
        tot -= float(np.vdot(xe.view(np.float32).ravel(), ye.view(np.float32).ravel()))
    return tot


def _cg_recon(f: np.ndarray, W: np.ndarray, D: np.ndarray, L: np.ndarray, lam: float, n_iter: int) -> np.ndarray:
    """Conjugate gradients (in k-space) for (D W D + lam G'G) chi = D W f."""
    shape = f.shape
    even = shape[2] % 2 == 0
    B = D * sfft.rfftn(W * f, workers=1)
    X = np.zeros_like(B)
    R = B.copy()
    P = R.copy()
    rs = _rdot(R, R, even)
    for _ in range(n_iter):
        AP = D * sfft.rfftn(W * sfft.irfftn(D * P, s=shape, workers=1), workers=1) + (lam * L) * P
        alpha = rs / max(_rdot(P, AP, even), 1e-30)
        X += np.complex64(alpha) * P
        R -= np.complex64(alpha) * AP
        rs_new = _rdot(R, R, even)
        P = R + np.complex64(rs_new / max(rs, 1e-30)) * P
        rs = rs_new
    return sfft.irfftn(X, s=shape, workers=1).astype(np.float32)


def _poly_background(shape: tuple[int, ...], mask: np.ndarray, amp: float, rng: np.random.Generator) -> np.ndarray:
    """Random quadratic polynomial with max |value| = amp (ppm) over the mask."""
    u = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if a == ax else 1 for a in range(3)])
         for ax, n in enumerate(shape)]
    c = rng.normal(size=10)
    bg = (c[0] + c[1] * u[0] + c[2] * u[1] + c[3] * u[2] + c[4] * u[0] * u[0] + c[5] * u[1] * u[1]
          + c[6] * u[2] * u[2] + c[7] * u[0] * u[1] + c[8] * u[0] * u[2] + c[9] * u[1] * u[2]).astype(np.float32)
    m = float(np.abs(bg[mask]).max()) if mask.any() else 1.0
    return bg * np.float32(amp / max(m, 1e-9))


# --------------------------------------------------------------------------------------------------- labels


def _label_grid(sub: _Subject, pose: _Pose, affine: np.ndarray, shape: tuple[int, ...], rot_acq: np.ndarray,
                spacing: Any) -> tuple[np.ndarray, dict[int, float]]:
    """Majority-vote labels on a site grid from the analytic DN solids; also the continuous volume (mm^3)."""
    labels = np.zeros(shape, np.uint8)
    vox_vol = float(np.prod(spacing))
    M, o = pose.template_map(affine)
    Minv = np.linalg.inv(M)
    cont: dict[int, float] = {}
    for side in (1, 2):
        dn = sub.dns[side]
        Q = _local_axes(dn, pose, rot_acq)
        half = dn.half_widths(Q) / np.asarray(spacing)
        vc = Minv @ (dn.centre - o)
        start = np.maximum(np.floor(vc - half).astype(int), 0)
        stop = np.minimum(np.ceil(vc + half).astype(int) + 1, shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        nsub = [max(3, int(math.ceil(sp / 0.34))) for sp in spacing]
        X, Y, Z = _grid_coords(M, o, sl, tuple(nsub))
        solid = dn.solid(X, Y, Z, pose.s).astype(np.float32)
        n = [s_.stop - s_.start for s_ in sl]
        frac = solid.reshape(n[0], nsub[0], n[1], nsub[1], n[2], nsub[2]).mean(axis=(1, 3, 5))
        cont[side] = float(frac.sum()) * vox_vol
        lab = labels[sl]
        lab[(frac > 0.5) & (lab == 0)] = side
    return labels, cont


# --------------------------------------------------------------------------------------------------- scan


def _round_fov(fov: Any) -> tuple[float, float, float]:
    vals = [float(_FOV_STEP_MM * math.ceil(float(v) / _FOV_STEP_MM - 1e-9)) for v in fov]
    if len(vals) != 3 or min(vals) < 48:
        raise ValueError(f"fov_mm must be 3 extents >= 48 mm, got {fov!r}")
    return vals[0], vals[1], vals[2]


def _reorient(arr: np.ndarray, affine: np.ndarray, code: str) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine re-stored so that nibabel.aff2axcodes(affine) == tuple(code)."""
    cur = nib.orientations.io_orientation(affine)
    tgt = nib.orientations.axcodes2ornt(tuple(code))
    tr = nib.orientations.ornt_transform(cur, tgt)
    out = nib.orientations.apply_orientation(arr, tr)
    aff = affine @ nib.orientations.inv_ornt_aff(tr, arr.shape)
    return np.ascontiguousarray(out), aff


def make_lamina_scan(seed: int, site: str, *, fov_mm: Any = None, coverage: str | None = None) -> LaminaScan:
    """Simulate one scan of subject `seed` at `site`.

    Args:
        seed: subject seed. The anatomy depends on the seed only (the same seed at two sites is the same subject,
            a "travelling subject"); pose, acquisition and noise depend on (seed, site).
        site: one of :data:`SITES`.
        fov_mm: acquisition field of view (mm, along the ~R, ~A, ~S acquisition axes), rounded up to multiples of
            12 mm. None = whole head (168 x 204 x 168 mm). A smaller FOV is centred on the DN pair (for fast tests).
        coverage: ``lamC`` only: "full", "partial" (inferior FOV cut below the DN) or None (random, p = 0.5).

    Returns:
        :class:`LaminaScan` (image float32 ppm and uint8 labels in the stored orientation, voxel->world affine).
    """
    if site not in _SPECS:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if coverage not in (None, "full", "partial"):
        raise ValueError(f"coverage must be None, 'full' or 'partial', got {coverage!r}")
    spec = _SPECS[site]
    sub = _make_subject(seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104729, SITES.index(site)]))

    # head pose (B0 = world +z, so the head rotation is the B0 tilt relative to the head)
    ang = np.radians([np.clip(rng.normal(0, 5), -12, 12), np.clip(rng.normal(0, 3), -8, 8),
                      np.clip(rng.normal(0, 3), -8, 8)])
    R_pose = _rot([0, 0, ang[2]]) @ _rot([0, ang[1], 0]) @ _rot([ang[0], 0, 0])
    pose = _Pose(R_pose, rng.uniform(-4, 4, 3), float(rng.uniform(0.9, 1.1)))
    b_head = R_pose.T @ np.array([0.0, 0.0, 1.0])
    tilt = math.degrees(math.acos(float(np.clip(b_head[2], -1, 1))))

    # acquisition grid (canonical frame: axes ~R, ~A, ~S)
    if spec.oblique:
        obl_axis = _unit([1.0, rng.normal(0, 0.3), rng.normal(0, 0.3)])
        obl_deg = float(rng.uniform(8, 15) * rng.choice([-1, 1]))
        rot_acq = _rot(obl_axis * math.radians(obl_deg))
    else:
        obl_deg, rot_acq = 0.0, np.eye(3)
    fov = _round_fov(DEFAULT_FOV_MM if fov_mm is None else fov_mm)
    sp = np.array(spec.voxel_mm)
    shape = tuple(int(round(f / s)) for f, s in zip(fov, sp, strict=True))
    centre = rng.uniform(-3, 3, 3) if fov_mm is None else pose.to_world(_DN_MIDPOINT) + rng.uniform(-2, 2, 3)
    origin = centre - rot_acq @ ((np.array(shape) - 1) / 2 * sp)
    A_site = np.eye(4)
    A_site[:3, :3] = rot_acq * sp
    A_site[:3, 3] = origin

    # fine grid aligned with the acquisition axes; first voxel centre = first site voxel centre, except slab axes
    h = FINE_MM
    fshape = tuple(int(round(f / h)) for f in fov)
    off = np.array([-(sp[a] - h) / 2 if a in spec.slab_axes else 0.0 for a in range(3)])
    A_fine = np.eye(4)
    A_fine[:3, :3] = rot_acq * h
    A_fine[:3, 3] = origin + rot_acq @ off
    cv = _Canvas(fshape, A_fine, pose, h)  # type: ignore[arg-type]
    dn_truth = _rasterise(cv, sub, pose, rot_acq)

    # forward model on the fine grid, then resample to the site grid
    b_acq = rot_acq.T @ np.array([0.0, 0.0, 1.0])
    spec_chi = sfft.rfftn(cv.chi, workers=1)
    spec_chi *= _dipole_kernel(fshape, (h, h, h), b_acq)
    if spec.slab_axes:
        fld = sfft.irfftn(spec_chi, s=fshape, workers=1).astype(np.float32)
        msk = cv.mask
        for a in spec.slab_axes:
            fld = _slab_average(fld, a, h, sp[a], shape[a])
            msk = _slab_average(msk, a, h, sp[a], shape[a])
    else:
        fld = _kcrop(spec_chi, fshape, shape)
        msk = _kcrop(sfft.rfftn(cv.mask, workers=1), fshape, shape)
    del spec_chi, cv
    mask = msk > 0.5
    labels, cont = _label_grid(sub, pose, A_site, shape, rot_acq, sp)
    labels[~mask] = 0

    # partial coverage (lamC): inferior cut of the slab, keeping the DN with a margin
    cov, cut_mm = "full", 0.0
    if site == "lamC":
        want = coverage if coverage is not None else ("partial" if rng.random() < 0.5 else "full")
        margin_mm = float(rng.uniform(6, 12))
        zs = np.nonzero(labels.any(axis=(0, 1)))[0]
        k_cut = int(max(0, zs.min() - math.ceil(margin_mm / sp[2]))) if zs.size else 0
        if want == "partial" and k_cut * sp[2] >= 6.0:
            fld, mask, labels = fld[:, :, k_cut:], mask[:, :, k_cut:], labels[:, :, k_cut:]
            A_site[:3, 3] = origin + rot_acq @ np.array([0.0, 0.0, k_cut * sp[2]])
            cov, cut_mm = "inferior_cut", k_cut * sp[2]
        shape = fld.shape

    # noise on the field, masking, reconstruction
    D = _dipole_kernel(shape, sp, b_acq)
    noise_ppm = float(rng.uniform(*{"lamA": (0.005, 0.01), "lamB": (0.005, 0.012), "lamC": (0.004, 0.01)}[site]))
    W = mask.astype(np.float32)
    if site == "lamA":
        t = float(rng.uniform(0.12, 0.2))
        H = np.where(np.abs(D) > t, 1.0 / np.where(D == 0, 1, D), np.where(D >= 0, 1.0, -1.0) / t).astype(np.float32)
        H[0, 0, 0] = 0.0
        recon, gain, rp = f"TKD(t={t:.3f})", 1.0, {"tkd_threshold": t}
    elif site == "lamB":
        lam = float(rng.uniform(0.003, 0.008))
        H = (D / (D * D + lam)).astype(np.float32)
        gain = float(rng.uniform(0.7, 0.9))
        recon, rp = f"Tikhonov(lambda={lam:.4f})", {"tikhonov_lambda": lam}
    else:
        lam = float(rng.uniform(1e-3, 4e-3))
        n_iter = int(rng.integers(15, 26))
        L = _laplacian_symbol(shape, sp)
        H = (D / (D * D + lam * L + 1e-12)).astype(np.float32)
        gain = float(rng.uniform(0.9, 1.1))
        recon, rp = f"CG-grad(lambda={lam:.4f},iter={n_iter})", {"cg_lambda": lam, "cg_iterations": n_iter}
    noise_gain = float(np.sqrt(np.mean(H.astype(np.float64) ** 2)))
    sigma_f = noise_ppm / max(noise_gain, 1e-6)
    bgf_amp = float(rng.uniform(0.002, 0.01))  # residual background field left by background-field removal
    fld = (fld + rng.normal(0.0, sigma_f, fld.shape).astype(np.float32) + _poly_background(shape, mask, bgf_amp, rng))
    fld *= W
    if site == "lamC":
        chi = _cg_recon(fld, W, D, L, lam, n_iter)
    else:
        chi = sfft.irfftn(sfft.rfftn(fld, workers=1) * H, s=shape, workers=1).astype(np.float32)
    bg_amp = float(rng.uniform(0.003, 0.015))  # smooth shading of the final map
    offset = float(rng.uniform(-0.02, 0.02))
    chi = (np.float32(gain) * chi + _poly_background(shape, mask, bg_amp, rng) + np.float32(offset)) * W
    chi = chi.astype(np.float32)

    image, affine = _reorient(chi, A_site, spec.stored)
    labels_st, _ = _reorient(labels, A_site, spec.stored)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    vox_vol = float(np.prod(sp))
    meta: dict[str, Any] = {
        "seed": int(seed), "age_like": round(sub.age, 1),
        "voxel_mm": "x".join(f"{z:.2f}" for z in zooms),
        "voxel_x_mm": float(zooms[0]), "voxel_y_mm": float(zooms[1]), "voxel_z_mm": float(zooms[2]),
        "shape": "x".join(str(n) for n in image.shape), "orientation": "".join(nib.aff2axcodes(affine)),
        "oblique_deg": round(obl_deg, 2), "reconstruction": recon, "gain": round(gain, 4),
        "tkd_threshold": "", "tikhonov_lambda": "", "cg_lambda": "", "cg_iterations": "",
        "b0_tilt_deg": round(tilt, 2), "head_scale": round(pose.s, 4),
        "head_rot_x_deg": round(math.degrees(ang[0]), 2), "head_rot_y_deg": round(math.degrees(ang[1]), 2),
        "head_rot_z_deg": round(math.degrees(ang[2]), 2),
        "coverage": cov, "fov_cut_mm": round(cut_mm, 1), "fov_mm": "x".join(f"{f:.0f}" for f in fov),
        "noise_ppm": round(noise_ppm, 5), "offset_ppm": round(offset, 5), "background_field_ppm": round(bgf_amp, 5),
        "background_chi_ppm": round(bg_amp, 5), "b0_direction_world": "0,0,1",
    }
    meta.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rp.items()})
    for side, name in ((1, "left"), (2, "right")):
        dn = sub.dns[side]
        cw = pose.to_world(dn.centre)
        meta.update({
            f"dn_volume_{name}_mm3": round(float(np.count_nonzero(labels == side)) * vox_vol, 1),
            f"dn_volume_true_{name}_mm3": round(cont[side], 1),
            f"dn_chi_lamina_{name}_ppm": round(dn.chi_lam, 4),
            f"dn_chi_interior_{name}_ppm": round(dn.chi_int, 4),
            f"dn_true_mean_{name}_ppm": round(dn_truth[side]["true_mean_ppm"], 4),
            f"dn_centre_{name}_world_mm": "{:.1f},{:.1f},{:.1f}".format(*cw),
        })
    return LaminaScan(image=image.astype(np.float32), labels=labels_st.astype(np.uint8), affine=affine,
                      site=site, meta=meta)


# --------------------------------------------------------------------------------------------------- bench


def _save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_lamina_bench(out_dir: Path, n_per_site: int = 4, seed: int = 0, *, overwrite: bool = False,
                       sites: tuple[str, ...] = SITES, fov_mm: Any = None,
                       shared_subjects: bool = False) -> list[dict[str, Any]]:
    """Write a benchmark set: ``out_dir/scans/<case>.nii.gz``, ``<case>_dn.nii.gz`` and ``out_dir/cases.csv``.

    Args:
        out_dir: output folder; refused when it exists and is not empty unless `overwrite`.
        n_per_site: scans per site.
        seed: base seed (subject seeds are derived from it).
        overwrite: allow a non-empty folder (previous ``scans/lam*.nii.gz`` and ``cases.csv`` are removed).
        sites: subset of :data:`SITES`.
        fov_mm: passed to :func:`make_lamina_scan`.
        shared_subjects: same subjects at every site (travelling subjects) instead of distinct subjects.

    Returns:
        One dict per case (the rows of ``cases.csv``): case, site, image, label (paths relative to `out_dir`),
        subject_seed, gen_seconds and the scan meta. ``lamC`` alternates full and partial coverage.
    """
    out_dir = Path(out_dir)
    if n_per_site < 1:
        raise ValueError(f"n_per_site must be >= 1, got {n_per_site}")
    bad = [s for s in sites if s not in _SPECS]
    if bad:
        raise ValueError(f"unknown sites {bad}; expected a subset of {SITES}")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty (pass overwrite=True)")
        for p in (out_dir / "scans").glob("lam*.nii.gz"):
            p.unlink()
        if (out_dir / "cases.csv").exists():
            (out_dir / "cases.csv").unlink()
    (out_dir / "scans").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for site in sites:
        for i in range(n_per_site):
            subj = seed * 1000 + i if shared_subjects else seed * 1000 + SITES.index(site) * 100 + i
            cov = ("partial" if i % 2 == 1 else "full") if site == "lamC" else None
            t0 = time.perf_counter()
            scan = make_lamina_scan(subj, site, fov_mm=fov_mm, coverage=cov)
            dt = time.perf_counter() - t0
            case = f"{site}_{i:03d}"
            img_rel, lab_rel = f"scans/{case}.nii.gz", f"scans/{case}_dn.nii.gz"
            _save_nifti(scan.image, scan.affine, out_dir / img_rel)
            _save_nifti(scan.labels, scan.affine, out_dir / lab_rel)
            rows.append({"case": case, "site": site, "image": img_rel, "label": lab_rel, "subject_seed": subj,
                         "gen_seconds": round(dt, 2), **scan.meta})
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(out_dir / "cases.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=fields)
        wr.writeheader()
        wr.writerows(rows)
    return rows


def save_overview_png(out_dir: Path, rows: list[dict[str, Any]], png: Path) -> Path:
    """Figure: per site (first case), a whole-slice axial view plus axial and coronal zooms through each DN.

    Images are shown in the closest-canonical (RAS) voxel frame, subject's left on the panel's LEFT (neurological
    convention); contours: red = label 1 (left DN), cyan = label 2 (right DN).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts: dict[str, dict[str, Any]] = {}
    for r in rows:
        firsts.setdefault(r["site"], r)
    fig, axes = plt.subplots(len(firsts), 5, figsize=(17, 3.6 * len(firsts)), squeeze=False)
    for row_ax, (site, r) in zip(axes, firsts.items(), strict=True):
        img = nib.as_closest_canonical(nib.load(str(Path(out_dir) / r["image"])))
        lab = nib.as_closest_canonical(nib.load(str(Path(out_dir) / r["label"])))
        im, lb = img.get_fdata(dtype=np.float32), np.asarray(lab.dataobj)
        zo = img.header.get_zooms()[:3]
        cents = {s: np.argwhere(lb == s).mean(0) for s in (1, 2) if (lb == s).any()}
        kw = {"cmap": "gray", "vmin": -0.06, "vmax": 0.16, "origin": "lower", "interpolation": "nearest"}
        k = int(round(np.mean([c[2] for c in cents.values()])))
        ax0 = row_ax[0]
        ax0.imshow(im[:, :, k].T, extent=(0, im.shape[0] * zo[0], 0, im.shape[1] * zo[1]), **kw)
        for s, col in ((1, "r"), (2, "c")):
            if (lb[:, :, k] == s).any():
                ax0.contour((lb[:, :, k] == s).T.astype(float), [0.5], colors=col, linewidths=0.6,
                            extent=(0, im.shape[0] * zo[0], 0, im.shape[1] * zo[1]), origin="lower")
        ax0.set_title(f"{site} {r['case']} axial ({r['orientation']}, {r['voxel_mm']} mm)", fontsize=8)
        ax0.text(2, 2, "L", color="y")
        ax0.text(im.shape[0] * zo[0] - 8, 2, "R", color="y")
        col_i = 1
        for plane in ("axial", "coronal"):
            for s in (1, 2):
                ax = row_ax[col_i]
                col_i += 1
                if s not in cents:
                    ax.set_axis_off()
                    continue
                c = np.round(cents[s]).astype(int)
                half = [int(round(22 / z)) for z in zo]
                x0, x1 = max(c[0] - half[0], 0), min(c[0] + half[0], im.shape[0])
                if plane == "axial":
                    y0, y1 = max(c[1] - half[1], 0), min(c[1] + half[1], im.shape[1])
                    sl_i, sl_l, zy = im[x0:x1, y0:y1, c[2]], lb[x0:x1, y0:y1, c[2]], zo[1]
                else:
                    y0, y1 = max(c[2] - half[2], 0), min(c[2] + half[2], im.shape[2])
                    sl_i, sl_l, zy = im[x0:x1, c[1], y0:y1], lb[x0:x1, c[1], y0:y1], zo[2]
                ext = (x0 * zo[0], x1 * zo[0], y0 * zy, y1 * zy)
                ax.imshow(sl_i.T, extent=ext, **kw)
                for ss, col in ((1, "r"), (2, "c")):
                    if (sl_l == ss).any():
                        ax.contour((sl_l == ss).T.astype(float), [0.5], colors=col, linewidths=0.6, extent=ext,
                                   origin="lower")
                name = "left (1)" if s == 1 else "right (2)"
                ax.set_title(f"{plane} through {name} DN, mm", fontsize=8)
                ax.tick_params(labelsize=6)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the out-of-family 'lamina' QSM phantom benchmark.")
    ap.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --overwrite)")
    ap.add_argument("--n-per-site", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", nargs="?", const="", default=None,
                    help="write an overview figure (default path: <out>/lamina_overview.png)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--shared-subjects", action="store_true", help="same subjects at every site")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = write_lamina_bench(args.out, args.n_per_site, args.seed, overwrite=args.overwrite,
                              shared_subjects=args.shared_subjects)
    total = time.perf_counter() - t0
    print(f"{'case':10s} {'orient':6s} {'voxel_mm':15s} {'shape':12s} {'recon':28s} {'coverage':12s} "
          f"{'L mm3':>7s} {'R mm3':>7s} {'sec':>5s}")
    for r in rows:
        print(f"{r['case']:10s} {r['orientation']:6s} {r['voxel_mm']:15s} {r['shape']:12s} {r['reconstruction']:28s} "
              f"{r['coverage']:12s} {r['dn_volume_left_mm3']:7.0f} {r['dn_volume_right_mm3']:7.0f} "
              f"{r['gen_seconds']:5.1f}")
    vols = [r[f"dn_volume_{s}_mm3"] for r in rows for s in ("left", "right")]
    print(f"{len(rows)} scans in {total:.1f} s ({total / len(rows):.1f} s/scan); DN volumes {min(vols):.0f}-"
          f"{max(vols):.0f} mm^3; cases: {args.out / 'cases.csv'}")
    if args.png is not None:
        png = Path(args.png) if args.png else args.out / "lamina_overview.png"
        print(f"figure: {save_overview_png(args.out, rows, png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
