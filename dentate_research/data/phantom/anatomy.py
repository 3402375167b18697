"""Parametric brain susceptibility anatomy defined as functions of MNI coordinates (mm).

Every subject is a random draw of :class:`SubjectAnatomy`: a pose (rotation, translation, scale) and a smooth
random deformation map world (scanner RAS, mm) -> MNI mm; tissue susceptibilities (ppm) that depend on group
and age; and a per-side dentate nucleus (DN) built as a crenellated, folded lamina (a bag-shaped shell) with a
darker white-matter hilum opening anteromedially. Deep nuclei (globus pallidus, substantia nigra, red nucleus,
putamen, caudate, thalamus), ventricles, cortex, cerebellar folia, veins and (for MS) white-matter lesions are
drawn from the same MNI-space description.

Susceptibility values follow /work/shared/REFERENCE.md (3 T in vivo scale; the DN is ~0.08-0.14 ppm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..labels import LEFT_DN, RIGHT_DN

# Nominal MNI centres of the dentate nuclei (mm).
DN_CENTRE_LEFT = (-13.8, -55.8, -36.4)
DN_CENTRE_RIGHT = (13.8, -55.7, -36.4)
GROUPS = ("healthy", "FRDA", "MS")

# Baseline tissue susceptibilities (ppm) at age 35 for healthy subjects.
BASE_CHI = {
    "csf": 0.0,
    "white_matter": -0.025,
    "cortex": 0.015,
    "thalamus": 0.02,
    "caudate": 0.045,
    "putamen": 0.035,
    "globus_pallidus": 0.12,
    "substantia_nigra": 0.11,
    "red_nucleus": 0.09,
    "brainstem": -0.015,
    "cerebellar_gm": 0.01,
    "cerebellar_wm": -0.02,
    "dentate": 0.10,
    "vein": 0.30,
}
# Change per year of age (ppm/year), iron accumulation in deep nuclei.
AGE_SLOPE = {"dentate": 0.0009, "globus_pallidus": 0.0008, "putamen": 0.0009, "caudate": 0.0005,
             "substantia_nigra": 0.0005, "red_nucleus": 0.0005}

# Deep nuclei: (name, centre of the left copy (x<0), semi-axes mm, rotation about z deg); mirrored for right.
DEEP_NUCLEI = [
    ("putamen", (-25.0, 2.0, 0.0), (5.5, 13.0, 8.0), 10.0),
    ("caudate", (-13.0, 12.0, 10.0), (4.5, 8.0, 7.5), -15.0),
    ("caudate", (-17.0, -8.0, 19.0), (3.0, 12.0, 3.5), -20.0),
    ("globus_pallidus", (-19.0, -3.0, -2.0), (3.5, 8.5, 4.5), 15.0),
    ("thalamus", (-11.0, -18.0, 6.0), (7.0, 13.0, 7.5), -10.0),
    ("substantia_nigra", (-11.0, -18.0, -12.0), (3.0, 7.5, 2.5), 35.0),
    ("red_nucleus", (-5.0, -20.0, -9.0), (3.2, 3.6, 3.4), 0.0),
]
VENTRICLES = [
    ((-12.0, -8.0, 20.0), (5.0, 22.0, 5.5), -8.0),
    ((-13.0, 14.0, 12.0), (4.0, 8.0, 6.0), -10.0),
    ((-22.0, -40.0, 10.0), (4.0, 12.0, 5.0), 20.0),
    ((-30.0, -15.0, -16.0), (2.5, 10.0, 3.0), 15.0),
    ((0.0, -15.0, 2.0), (1.6, 12.0, 7.0), 0.0),
    ((0.0, -45.0, -32.0), (5.0, 3.5, 7.0), 0.0),
]
# Fixed veins (polylines in MNI mm, radius mm); mirrored copies for the lateral ones.
VEINS = [
    ([(0, 60, 40), (0, 20, 72), (0, -40, 76), (0, -90, 45), (0, -102, 10)], 2.0, False),  # sup. sagittal
    ([(0, -38, 0), (0, -55, 5), (0, -80, 10)], 1.5, False),  # straight sinus
    ([(-3, 0, 14), (-3, -20, 14), (-2, -36, 6)], 1.0, True),  # internal cerebral veins
    ([(0, -55, -15), (0, -65, -22), (0, -78, -40)], 1.0, False),  # superior vermian vein
    ([(-8, -45, -22), (-22, -52, -24), (-34, -62, -22)], 0.9, True),  # hemispheric vein above the DN
    ([(-6, -60, -48), (-20, -66, -46), (-30, -75, -42)], 0.8, True),  # inferior hemispheric vein
]


@dataclass
class DentateShape:
    """One DN as a folded lamina in its local frame (u anteromedial long axis, v, w superior).

    Attributes:
        side: 1 left, 2 right.
        centre: MNI mm.
        semi_axes: (a_u, a_v, a_w) mm of the outer surface before crenellation.
        yaw_deg, pitch_deg: orientation of the long axis (yaw measured from +y towards the midline).
        thickness_mm: lamina thickness (the bright band seen in QSM at ~1 mm).
        crenellation: (n_azimuth, n_elevation, amplitude, phase1, phase2).
        lobes: low-order shape coefficients (random smooth deformation of the bag).
        hilum_half_angle_deg: half-opening of the hilum in the axial plane.
        chi: lamina susceptibility (ppm); chi_gradient: relative smooth variation along the lamina.
    """

    side: int
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    yaw_deg: float
    pitch_deg: float
    thickness_mm: float
    crenellation: tuple[float, float, float, float, float]
    lobes: tuple[float, ...]
    hilum_half_angle_deg: float
    chi: float
    chi_gradient: tuple[float, float]
    target_volume_mm3: float

    def rotation(self) -> np.ndarray:
        """Columns: local u, v, w axes expressed in MNI (x, y, z)."""
        sign = 1.0 if self.side == LEFT_DN else -1.0  # medial is +x for the left DN, -x for the right
        yaw, pitch = np.deg2rad(self.yaw_deg), np.deg2rad(self.pitch_deg)
        u = np.array([sign * np.sin(yaw) * np.cos(pitch), np.cos(yaw) * np.cos(pitch), np.sin(pitch)])
        w0 = np.array([0.0, 0.0, 1.0])
        v = np.cross(w0, u)
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        return np.stack([u, v, w], axis=1)

    def local_coordinates(self, mx: np.ndarray, my: np.ndarray, mz: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rot = self.rotation().tolist()
        dx, dy, dz = mx - self.centre[0], my - self.centre[1], mz - self.centre[2]
        u = rot[0][0] * dx + rot[1][0] * dy + rot[2][0] * dz
        v = rot[0][1] * dx + rot[1][1] * dy + rot[2][1] * dz
        w = rot[0][2] * dx + rot[1][2] * dy + rot[2][2] * dz
        return u, v, w

    def classify_normalized(self, pu: np.ndarray, pv: np.ndarray, pw: np.ndarray, scale: float = 1.0
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Lamina and hilum masks for points in coordinates normalized by the semi-axes (x ``scale``)."""
        rho = np.sqrt(pu * pu + pv * pv + pw * pw) + 1e-6
        azimuth = np.arctan2(pv, pu)
        elevation = np.arcsin(np.clip(pw / rho, -1, 1))
        n_az, n_el, amp, ph1, ph2 = self.crenellation
        radius = 1.0 + amp * np.cos(n_az * azimuth + ph1) * np.cos(n_el * elevation + ph2)
        c = self.lobes
        radius = radius + c[0] * np.cos(azimuth) + c[1] * np.sin(2 * azimuth) + c[2] * np.sin(elevation) \
            + c[3] * np.cos(2 * elevation)
        mean_axis = float(np.mean(self.semi_axes)) * scale
        inner = radius - self.thickness_mm / mean_axis
        inside_outer = rho < radius
        hilum_dir = (np.abs(azimuth) < np.deg2rad(self.hilum_half_angle_deg)) & (np.abs(pw / rho) < 0.7)
        lamina = inside_outer & (rho >= inner) & ~hilum_dir
        hilum = inside_outer & ~lamina
        return lamina, hilum

    def render(self, mx: np.ndarray, my: np.ndarray, mz: np.ndarray, scale: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lamina mask, hilum mask and lamina chi map (ppm) at MNI points for a size ``scale``."""
        u, v, w = self.local_coordinates(mx, my, mz)
        a = np.asarray(self.semi_axes) * scale
        lamina, hilum = self.classify_normalized(u / a[0], v / a[1], w / a[2], scale)
        g1, g2 = self.chi_gradient
        chi = self.chi * (1.0 + g1 * (-u / a[0]) + g2 * (w / a[2]))
        return lamina, hilum, chi.astype(np.float32)


_UNIT_BALL_POINTS: np.ndarray | None = None


def _unit_ball_points(n: int = 40_000) -> np.ndarray:
    """Fixed quasi-random points filling the cube [-1.4, 1.4]^3 (for shell volume integrals)."""
    global _UNIT_BALL_POINTS
    if _UNIT_BALL_POINTS is None:
        rng = np.random.default_rng(12345)
        _UNIT_BALL_POINTS = rng.uniform(-1.4, 1.4, size=(3, n)).astype(np.float32)
    return _UNIT_BALL_POINTS


def dentate_volume_mm3(shape: DentateShape, scale: float) -> float:
    """Continuous lamina volume (mm^3) of a DN at size ``scale`` (Monte Carlo over fixed points)."""
    p = _unit_ball_points()
    lamina, _ = shape.classify_normalized(p[0], p[1], p[2], scale)
    cube = 2.8**3 * float(np.prod(shape.semi_axes)) * scale**3
    return float(lamina.mean() * cube)


def dentate_scale_for_volume(shape: DentateShape, target_mm3: float) -> float:
    """Size factor that gives the DN lamina the target volume (bisection)."""
    lo, hi = 0.5, 2.0
    for _ in range(15):
        mid = 0.5 * (lo + hi)
        if dentate_volume_mm3(shape, mid) < target_mm3:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass
class SubjectAnatomy:
    """A random subject: pose, deformation, tissue values and DN shapes (drawn by :func:`sample_subject`)."""

    group: str
    age: float
    sex: str
    scale: np.ndarray  # head size factors (x, y, z)
    rotation_deg: np.ndarray  # (roll about y, pitch about x, yaw about z)
    translation_mm: np.ndarray
    deformation: list[tuple[int, float, float, float, float, float, float, float]]
    chi: dict[str, float]
    dentates: list[DentateShape]
    dentate_scales: list[float]
    lesions: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)
    extra_veins: list[tuple[list[tuple[float, float, float]], float]] = field(default_factory=list)
    texture_seed: int = 0
    folia_wavelength_mm: float = 4.5
    cerebellar_atrophy: float = 0.0
    # Hard-case effects (module ``hard``); the defaults leave the anatomy exactly as the easy presets draw it.
    fourth_ventricle_gain: float = 2.0  # 4th-ventricle semi-axes grow by (1 + gain x cerebellar_atrophy)
    dn_heterogeneity: float = 0.0  # relative SD of a smooth iron field inside each DN lamina
    dn_heterogeneity_mm: float = 2.5  # its correlation length
    dn_halo: tuple[float, float] = (0.0, 1.0)  # (fraction of DN contrast, decay mm) of a gradual DN border
    sinuses: list[tuple[list[tuple[float, float, float]], float]] = field(default_factory=list)  # in the mask
    rim_lesions: list[tuple[np.ndarray, np.ndarray, float, float, float]] = field(default_factory=list)
    # MS lesions are drawn into white matter found by value. The easy presets compare the float32 map with float64
    # values, which never match, so their lesions are never drawn; kept (False) so their arrays stay bit-identical.
    # The hard cases set True (float32 comparison): their lesions are drawn.
    lesions_in_float32_white_matter: bool = False

    def rotation_matrix(self) -> np.ndarray:
        rx, ry, rz = np.deg2rad(self.rotation_deg)
        cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
        mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        return mz @ my @ mx

    def world_to_mni(self, wx: np.ndarray, wy: np.ndarray, wz: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map a world grid (1D axis coordinates in scanner RAS mm) to MNI mm: inverse pose + smooth warp.

        Returns three float32 arrays of shape (len(wx), len(wy), len(wz)).
        """
        rot_t = self.rotation_matrix().T
        dx = (np.asarray(wx, np.float64) - self.translation_mm[0])[:, None, None]
        dy = (np.asarray(wy, np.float64) - self.translation_mm[1])[None, :, None]
        dz = (np.asarray(wz, np.float64) - self.translation_mm[2])[None, None, :]
        out = []
        for r in range(3):
            s = rot_t[r] / self.scale[r]
            out.append(((s[0] * dx).astype(np.float32) + (s[1] * dy).astype(np.float32))
                       + (s[2] * dz).astype(np.float32))
        for axis, amp, fx, fy, fz, p1, p2, p3 in self.deformation:  # separable smooth displacement (mm)
            cx = (amp * np.cos(fx * np.asarray(wx, np.float64) + p1)).astype(np.float32)[:, None, None]
            cy = np.cos(fy * np.asarray(wy, np.float64) + p2).astype(np.float32)[None, :, None]
            cz = np.cos(fz * np.asarray(wz, np.float64) + p3).astype(np.float32)[None, None, :]
            out[axis] += (cx * cy) * cz
        return out[0], out[1], out[2]

    def mni_to_world(self, point: np.ndarray) -> np.ndarray:
        """Approximate inverse (pose only, without the small deformation)."""
        return self.rotation_matrix() @ (np.asarray(point) * self.scale) + self.translation_mm


def sample_subject(rng: np.random.Generator, group: str, age: float | None = None) -> SubjectAnatomy:
    """Draw a random subject of ``group`` ('healthy', 'FRDA', 'MS') with a plausible age and sex."""
    if group not in GROUPS:
        raise ValueError(f"unknown group '{group}'; allowed: {list(GROUPS)}")
    if age is None:
        low, high = {"healthy": (11, 64), "FRDA": (11, 60), "MS": (20, 64)}[group]
        age = float(rng.uniform(low, high))
    sex = "F" if rng.random() < 0.52 else "M"
    scale = np.full(3, rng.normal(1.0 if sex == "M" else 0.96, 0.03)) * rng.normal(1.0, 0.015, 3)
    rotation = np.clip(np.array([rng.normal(0, 4.0), rng.normal(0, 2.5), rng.normal(0, 3.0)]), -8.0, 8.0)
    translation = rng.normal(0, 3.0, 3)
    deformation = []
    for axis in range(3):
        for _ in range(3):
            freq = 2 * np.pi / rng.uniform(50.0, 140.0, 3)
            deformation.append((axis, float(rng.normal(0, 1.2)), *map(float, freq),
                                *map(float, rng.uniform(0, 2 * np.pi, 3))))
    # Tissue values: baseline + age slope + between-subject variation.
    chi = {}
    for name, base in BASE_CHI.items():
        value = base + AGE_SLOPE.get(name, 0.0) * (age - 35.0)
        value += rng.normal(0, 0.006 if name not in ("csf", "vein") else 0.003)
        chi[name] = float(value)
    chi["vein"] = float(rng.uniform(0.25, 0.35))
    atrophy = 0.0
    if group == "FRDA":
        chi["dentate"] += float(rng.uniform(0.015, 0.035))
        atrophy = float(rng.uniform(0.0, 0.08))
    if group == "MS":
        chi["thalamus"] -= 0.008
    dentates, scales = [], []
    if group == "FRDA":
        volume_mean = float(np.clip(rng.normal(730, 110), 520, 1050))
    else:
        volume_mean = float(np.clip(rng.normal(950, 110) + 1.5 * (35 - age) * 0, 720, 1180))
    dn_chi = chi["dentate"]
    for side, nominal in ((LEFT_DN, DN_CENTRE_LEFT), (RIGHT_DN, DN_CENTRE_RIGHT)):
        target = float(np.clip(volume_mean * rng.normal(1.0, 0.06), 470 if group == "FRDA" else 650, 1250))
        centre = tuple(float(c) for c in np.asarray(nominal) + rng.normal(0, 1.8, 3))
        shape = DentateShape(
            side=side,
            centre=centre,  # type: ignore[arg-type]
            semi_axes=tuple(float(a) for a in np.array([9.5, 6.0, 7.0]) * rng.normal(1.0, 0.06, 3)),
            yaw_deg=float(rng.normal(35, 6)),
            pitch_deg=float(rng.normal(-12, 5)),
            thickness_mm=float(rng.uniform(3.3, 4.1)),
            crenellation=(float(rng.integers(12, 17)), float(rng.integers(3, 6)),
                          float(rng.uniform(0.14, 0.2)),
                          float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi))),
            lobes=tuple(float(x) for x in rng.normal(0, 0.04, 4)),
            hilum_half_angle_deg=float(rng.uniform(55, 70)),
            chi=float(dn_chi + rng.normal(0, 0.004)),
            chi_gradient=(float(rng.normal(0.1, 0.05)), float(rng.normal(0, 0.05))),
            target_volume_mm3=target,
        )
        dentates.append(shape)
        # The head scale also scales the DN in world space: aim the MNI-space volume accordingly.
        scales.append(dentate_scale_for_volume(shape, target / float(np.prod(scale))))
    lesions = []
    if group == "MS":
        for _ in range(int(rng.integers(6, 18))):
            side = rng.choice([-1.0, 1.0])
            centre = np.array([side * rng.uniform(12, 32), rng.uniform(-40, 25), rng.uniform(8, 34)])
            if rng.random() < 0.2:  # infratentorial lesion in cerebellar white matter / peduncles
                centre = np.array([side * rng.uniform(8, 22), rng.uniform(-55, -40), rng.uniform(-35, -22)])
            radii = rng.uniform(1.5, 5.0, 3)
            lesions.append((centre, radii, float(rng.uniform(0.01, 0.05))))
    extra_veins = []
    for _ in range(int(rng.integers(4, 9))):
        start = np.array([rng.uniform(-45, 45), rng.uniform(-80, 40), rng.uniform(-5, 45)])
        end = start + rng.normal(0, 12, 3)
        extra_veins.append(([tuple(start), tuple(end)], float(rng.uniform(0.6, 1.0))))
    for side in (-1, 1):  # small veins near the DN (compete with it for attention)
        start = np.array([side * rng.uniform(20, 30), rng.uniform(-68, -58), rng.uniform(-44, -28)])
        end = start + np.array([side * rng.uniform(4, 10), rng.normal(-8, 3), rng.normal(0, 4)])
        extra_veins.append(([tuple(start), tuple(end)], float(rng.uniform(0.6, 0.9))))
    return SubjectAnatomy(group, float(age), sex, scale, rotation, translation, deformation, chi, dentates,
                          scales,
                          lesions, extra_veins, int(rng.integers(0, 2**31 - 1)),
                          float(rng.uniform(4.0, 5.5)), atrophy)


# ---------------------------------------------------------------------------------------------------------
# Rendering on a world grid


def _ellipsoid(mx, my, mz, centre, semi, yaw_deg=0.0) -> np.ndarray:
    """Normalized squared radius of an ellipsoid rotated about z by yaw_deg (<1 inside)."""
    centre, semi = [float(c) for c in centre], [float(s) for s in semi]
    dx, dy, dz = mx - centre[0], my - centre[1], mz - centre[2]
    if yaw_deg:
        c, s = float(np.cos(np.deg2rad(yaw_deg))), float(np.sin(np.deg2rad(yaw_deg)))
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2


def _segment_distance(mx, my, mz, a, b) -> np.ndarray:
    a = [float(v) for v in a]
    ab = [float(q) - p for p, q in zip(a, b, strict=True)]
    denom = (ab[0] ** 2 + ab[1] ** 2 + ab[2] ** 2) or 1.0
    t = np.clip(((mx - a[0]) * ab[0] + (my - a[1]) * ab[1] + (mz - a[2]) * ab[2]) / denom, 0, 1)
    return np.sqrt((mx - a[0] - t * ab[0]) ** 2 + (my - a[1] - t * ab[1]) ** 2 + (mz - a[2] - t * ab[2]) ** 2)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray,
                  sigma_mm: float) -> np.ndarray:
    """Gaussian random field with unit SD and correlation length ~``sigma_mm``, on the grid ``shape``.

    Drawn on a grid of ~2 mm (cheap) and linearly upsampled.
    """
    stride = np.maximum(1, np.floor(2.0 / np.asarray(spacing))).astype(int)
    coarse_shape = tuple(int(np.ceil(n / s)) + 2 for n, s in zip(shape, stride, strict=True))
    sigma = sigma_mm / (np.asarray(spacing) * stride)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma, mode="wrap")
    noise /= noise.std() + 1e-8
    if np.all(stride == 1):
        return noise[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    for axis, s in enumerate(stride):
        noise = _upsample_linear(noise, int(s), axis)
    return np.ascontiguousarray(noise[: shape[0], : shape[1], : shape[2]], dtype=np.float32)


def _upsample_linear(array: np.ndarray, stride: int, axis: int) -> np.ndarray:
    """Linear interpolation by an integer factor along one axis (samples at i/stride, i = 0 .. s(n-1))."""
    if stride == 1:
        return array
    a = np.moveaxis(array, axis, 0)
    lo, hi = a[:-1], a[1:]
    parts = [lo + (hi - lo) * np.float32(j / stride) for j in range(stride)]
    out = np.stack(parts, axis=1).reshape((-1, *a.shape[1:]))
    return np.moveaxis(out, 0, axis)


@dataclass
class RenderedAnatomy:
    """Fine-grid maps of one subject: chi (ppm), brain mask, DN labels (0/1/2), cerebellum mask and (only when
    asked for, ``render_subject(..., with_veins=True)``) the vein and sinus mask."""

    chi: np.ndarray
    brain: np.ndarray
    dentate: np.ndarray
    cerebellum: np.ndarray
    vein: np.ndarray | None = None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _cerebrum_floor_z(mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """MNI z of the cerebrum's base: temporal lobes reach ~-42 mm laterally, the frontal base ~-24 mm,
    the diencephalon/midbrain level medially ~-10 mm (the brainstem continues below)."""
    temporal = _sigmoid((np.abs(mx) - 24.0) / 3.0) * _sigmoid((my + 50.0) / 4.0) * _sigmoid((18.0 - my) / 4.0)
    frontal = _sigmoid((my - 10.0) / 5.0)
    return -10.0 - 32.0 * temporal - 14.0 * frontal * (1.0 - temporal)


def _tentorium_z(my: np.ndarray) -> np.ndarray:
    """MNI z of the tentorium (separates cerebrum above from cerebellum below) as a function of y."""
    return -14.0 + 0.32 * (my + 50.0)


def _box_slices(subject: SubjectAnatomy, centre_mni, radius_mm: float, origin: np.ndarray,
                spacing: np.ndarray, shape: tuple[int, int, int]) -> tuple[slice, slice, slice] | None:
    """Index box on the world grid that contains an MNI ball (pose only, with a deformation margin)."""
    centre_w = subject.mni_to_world(np.asarray(centre_mni, float))
    r = radius_mm * float(np.max(subject.scale)) + 6.0
    lo = np.floor((centre_w - r - origin) / spacing).astype(int)
    hi = np.ceil((centre_w + r - origin) / spacing).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def render_subject(subject: SubjectAnatomy, origin: np.ndarray, spacing: np.ndarray,
                   shape: tuple[int, int, int], with_veins: bool = False) -> RenderedAnatomy:
    """Evaluate the subject's anatomy at the centres of a world grid (RAS, axis aligned).

    Args:
        origin: world mm of voxel (0, 0, 0)'s centre; spacing: mm per axis; shape: voxels.
        with_veins: also return the mask of veins and sinuses (``RenderedAnatomy.vein``).
    """
    origin, spacing = np.asarray(origin, float), np.asarray(spacing, float)
    axes = [origin[i] + spacing[i] * np.arange(shape[i]) for i in range(3)]
    mx, my, mz = subject.world_to_mni(*axes)
    chi_values = subject.chi
    rng = np.random.default_rng(subject.texture_seed)
    texture_a = _smooth_noise(rng, shape, spacing, 3.0)
    texture_b = _smooth_noise(rng, shape, spacing, 4.5)

    # Brain compartments.
    tent = _tentorium_z(my)
    cerebrum_r = _ellipsoid(mx, my, mz, (0.0, -17.0, 12.0), (68.0, 88.0, 62.0))
    infratentorial = (my < -30) & (mz < tent)
    cerebrum = (cerebrum_r < 1.0) & ~infratentorial
    low = cerebrum & (mz < -8.0)  # the floor only matters below the diencephalon level
    cerebrum[low] = mz[low] > _cerebrum_floor_z(mx[low], my[low])
    atrophy = 1.0 - subject.cerebellar_atrophy
    cb_box = _box_slices(subject, (0.0, -66.0, -38.0), 56.0, origin, spacing, shape)
    bx, by, bz = mx[cb_box], my[cb_box], mz[cb_box]
    cb_left = _ellipsoid(bx, by, bz, (-25.0, -67.0, -38.0), np.array((26.0, 30.0, 23.0)) * atrophy)
    cb_right = _ellipsoid(bx, by, bz, (25.0, -67.0, -38.0), np.array((26.0, 30.0, 23.0)) * atrophy)
    vermis = _ellipsoid(bx, by, bz, (0.0, -66.0, -32.0), np.array((11.0, 28.0, 22.0)) * atrophy)
    cb_r = np.minimum(np.minimum(cb_left, cb_right), vermis)
    cerebellum = np.zeros(shape, bool)
    cerebellum[cb_box] = (cb_r < 1.0) & (bz < tent[cb_box] - 1.5)
    stem_top = _segment_distance(mx, my, mz, (0, -20, -6), (0, -30, -28))
    stem_low = _segment_distance(mx, my, mz, (0, -30, -28), (0, -40, -62))
    brainstem = (stem_top < 11.0) | (stem_low < 10.5 - 0.05 * (-28 - np.minimum(mz, -28)))
    brain = cerebrum | cerebellum | brainstem

    chi = np.zeros(shape, np.float32)
    # Cerebrum: white matter with a cortical ribbon (gyral texture) and sulcal CSF at the surface.
    depth = 1.0 - np.sqrt(np.minimum(cerebrum_r, 4.0))  # ~0 at the surface
    ribbon = depth < 0.055 + 0.02 * texture_a
    sulcal_csf = (depth < 0.035) & (texture_b > 0.9)
    chi[cerebrum] = chi_values["white_matter"]
    chi[cerebrum & ribbon] = chi_values["cortex"]
    chi[cerebrum & sulcal_csf] = chi_values["csf"]
    chi[brainstem] = chi_values["brainstem"]
    fissure = (np.abs(mx) < 1.2) & (mz > 22) & cerebrum
    chi[fissure] = chi_values["csf"]

    # Cerebellum: white-matter core branching into folia (GM/WM lamellae concentric around a hub).
    hub_dist = np.sqrt((bx / 1.15) ** 2 + (by + 52.0) ** 2 + (bz + 30.0) ** 2)
    folia = np.cos(2 * np.pi * hub_dist / subject.folia_wavelength_mm + 1.8 * texture_b[cb_box])
    cb_depth = 1.0 - np.sqrt(np.minimum(cb_r, 4.0))
    wm_threshold = 1.2 - 4.4 * cb_depth
    in_cb = cerebellum[cb_box]
    # Deep cerebellar white matter around the dentate nuclei and the superior cerebellar peduncles.
    deep_wm = np.zeros(cb_r.shape, bool)
    for dn in subject.dentates:
        deep_wm |= _ellipsoid(bx, by, bz, dn.centre, (14.0, 15.0, 12.0)) < 1.0
        peduncle = (dn.centre[0] * 0.35, -36.0, -22.0)
        deep_wm |= _segment_distance(bx, by, bz, dn.centre, peduncle) < 4.5
    cb_wm = in_cb & ((cb_depth > 0.45) | (folia > wm_threshold) | deep_wm)
    cb_csf = in_cb & (cb_depth < 0.12) & (folia < -0.85)
    chi[cerebellum] = chi_values["cerebellar_gm"]
    chi[cb_box][cb_wm] = chi_values["cerebellar_wm"]
    chi[cb_box][cb_csf] = chi_values["csf"]
    cerebellum_mask = cerebellum.copy()

    # Deep nuclei (left copy and its mirror).
    for name, centre, semi, yaw in DEEP_NUCLEI:
        for sign in (1.0, -1.0):
            c = (sign * centre[0], centre[1], centre[2])
            box = _box_slices(subject, c, max(semi), origin, spacing, shape)
            if box is None:
                continue
            inside = _ellipsoid(mx[box], my[box], mz[box], c, semi, -sign * yaw) < 1.0
            chi[box][inside] = chi_values[name]
    # Ventricles and CSF.
    for centre, semi, yaw in VENTRICLES:
        for sign in ((1.0, -1.0) if centre[0] != 0 else (1.0,)):
            c = (sign * centre[0], centre[1], centre[2])
            box = _box_slices(subject, c, max(semi), origin, spacing, shape)
            if box is None:
                continue
            fourth = centre[1] == -45.0  # the 4th ventricle widens with cerebellar atrophy
            widen = 1 + subject.fourth_ventricle_gain * subject.cerebellar_atrophy
            semi_eff = tuple(s * widen for s in semi) if fourth else semi
            inside = _ellipsoid(mx[box], my[box], mz[box], c, semi_eff, -sign * yaw) < 1.0
            chi[box][inside] = chi_values["csf"]
            brain[box] |= inside
    # MS lesions in white matter.
    wm_values = [chi_values["white_matter"], chi_values["cerebellar_wm"]]
    if subject.lesions_in_float32_white_matter:
        wm_values = list(np.asarray(wm_values, np.float32))
    wm_like = np.isin(chi, wm_values)
    for centre, radii, delta in subject.lesions:
        box = _box_slices(subject, centre, float(max(radii)), origin, spacing, shape)
        if box is None:
            continue
        inside = (_ellipsoid(mx[box], my[box], mz[box], centre, radii) < 1.0) & wm_like[box]
        chi[box][inside] = chi_values["white_matter"] + delta
    for centre, radii, core, rim, rim_mm in subject.rim_lesions:  # paramagnetic-rim lesions (hard cases)
        box = _box_slices(subject, centre, float(max(radii)), origin, spacing, shape)
        if box is None:
            continue
        r2 = _ellipsoid(mx[box], my[box], mz[box], centre, radii)
        inside = (r2 < 1.0) & wm_like[box]
        inner = (1.0 - rim_mm / float(np.mean(radii))) ** 2
        chi[box][inside] = chi_values["white_matter"] + core
        chi[box][inside & (r2 >= inner)] = chi_values["white_matter"] + rim

    # Dentate nuclei: lamina (label) and a white-matter hilum.
    dentate = np.zeros(shape, np.uint8)
    for dn, dn_scale in zip(subject.dentates, subject.dentate_scales, strict=True):
        box = _box_slices(subject, dn.centre, 1.5 * max(dn.semi_axes) * dn_scale, origin, spacing, shape)
        if box is None:
            continue
        lamina, hilum, dn_chi = dn.render(mx[box], my[box], mz[box], dn_scale)
        chi[box][hilum] = chi_values["cerebellar_wm"]
        if subject.dn_heterogeneity > 0 or subject.dn_halo[0] > 0:
            _dn_iron_distribution(subject, dn, chi, box, lamina, dn_chi, spacing)
        chi[box][lamina] = dn_chi[lamina]
        dentate[box][lamina] = dn.side
        cerebellum_mask[box] |= lamina | hilum

    # Veins (fixed anatomy, mirrored where paired, plus the subject's own small veins).
    veins: list[tuple[list, float]] = []
    for points, radius, paired in VEINS:
        veins.append((points, radius))
        if paired:
            veins.append(([(-p[0], p[1], p[2]) for p in points], radius))
    veins.extend(subject.extra_veins)
    vein_mask = np.zeros(shape, bool) if with_veins else None
    def tube_pieces(points, radius):
        """(box, voxels of the box within ``radius`` mm of the polyline segment) for each segment."""
        for a, b in zip(points[:-1], points[1:], strict=True):
            mid = 0.5 * (np.asarray(a, float) + np.asarray(b, float))
            half = 0.5 * float(np.linalg.norm(np.asarray(b, float) - np.asarray(a, float))) + radius
            box = _box_slices(subject, mid, half, origin, spacing, shape)
            if box is not None:
                yield box, _segment_distance(mx[box], my[box], mz[box], a, b) < radius

    for points, radius in veins:
        for box, in_tube in tube_pieces(points, radius):
            inside = in_tube & brain[box]
            inside &= dentate[box] == 0
            chi[box][inside] = chi_values["vein"]
            if vein_mask is not None:
                vein_mask[box] |= inside
    # Dural sinuses that the brain mask includes (hard cases): drawn whether or not inside the brain, and added
    # to the mask, as a generous mask of a real QSM pipeline does.
    for points, radius in subject.sinuses:
        for box, in_tube in tube_pieces(points, radius):
            inside = in_tube & (dentate[box] == 0)
            chi[box][inside] = chi_values["vein"]
            brain[box] |= inside
            if vein_mask is not None:
                vein_mask[box] |= inside

    chi[~brain] = 0.0
    return RenderedAnatomy(chi, brain, dentate, cerebellum_mask & brain, vein_mask)


def _dn_iron_distribution(subject: SubjectAnatomy, dn: DentateShape, chi: np.ndarray, box: tuple[slice, ...],
                          lamina: np.ndarray, dn_chi: np.ndarray, spacing: np.ndarray) -> None:
    """Hard cases: heterogeneous iron inside the lamina (``dn_chi`` modified in place) and a gradual border (a
    halo of iron-bearing tissue around the lamina that decays over ``dn_halo[1]`` mm; written into ``chi``).

    Seeded by the subject's texture seed and the side, so it is deterministic."""
    if not lamina.any():
        return
    rng = np.random.default_rng([subject.texture_seed, 17, dn.side])
    if subject.dn_heterogeneity > 0:
        noise = _smooth_noise(rng, lamina.shape, spacing, subject.dn_heterogeneity_mm)
        dn_chi *= np.clip(1.0 + np.float32(subject.dn_heterogeneity) * noise, 0.25, 1.9).astype(np.float32)
    fraction, decay_mm = subject.dn_halo
    if fraction > 0:
        distance = ndimage.distance_transform_edt(~lamina, sampling=spacing).astype(np.float32)
        halo = (~lamina) & (distance < 4.0 * decay_mm)
        local = chi[box]
        weight = np.float32(fraction) * np.exp(-distance[halo] / np.float32(decay_mm))
        # tissue next to the lamina takes a share of the nucleus' iron: chi moves towards the DN value
        local[halo] = local[halo] + weight * (np.float32(dn.chi) - local[halo])
