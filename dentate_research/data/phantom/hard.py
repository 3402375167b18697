"""Hard cases of real QSM: the effects that make DN segmentation fail, as seeded per-subject / per-site draws.

Every effect is OFF in the presets ``tiny``, ``small``, ``cpu`` and ``paper`` (``Preset.hard is None``: their arrays
are bit-identical to the generator before this module existed) and ON in ``hard`` (1 mm, like ``cpu``),
``hard_tiny`` (2 mm, like ``tiny``, for tests) and ``hard_cut`` (``hard`` with every slab cutting near the DN). A
case's draws come from their own generator ``default_rng([seed, site index, subject index, 7001])``
(:func:`draw_case`), so they are deterministic and do not shift the easy presets' random streams. The drawn values
are written to the manifest (``hard_*`` columns of :data:`META_KEYS`), so a study can bin scans by them
(``reproduce`` study ``failure_modes``, table T7).

Effects, their source and their distribution (``HardCaseParams`` holds the global numbers, ``HARD_SITE_EFFECTS``
the per-site ones):

===========================  ========================================================================================
low-iron DN, little          DN susceptibility follows a saturating exponential in age,
contrast (age)               ``chi(age) = chi_adult - (chi_adult - chi_child) exp(-(age - 11) / tau)``, 0.045 ppm at 11
                             years, 0.080 at 20, 0.111 at 35, 0.130 at 64 (tau 18 years), between-subject SD
                             0.008 + 0.0002 (age - 11) ppm. Source: iron-rich deep nuclei gain susceptibility by
                             exponential growth over the lifespan, steepest in childhood (Li et al., Hum Brain Mapp
                             2014; Treit et al., Hum Brain Mapp 2021, whose variance also grows with age); post-mortem
                             non-haem iron (Hallgren & Sourander, J Neurochem 1958). The end points are chosen to span
                             the 0.06-0.15 ppm of in vivo 3 T DN values (REFERENCE.md) with children at the low end;
                             they are not a fit. Ages: cohort-specific per site (siteD 11-22, siteG 18-35), else
                             the group's range with 25 % of healthy/FRDA subjects drawn from 11-18 years.
heterogeneous iron,          Inside each lamina a smooth random field (correlation 2.5 mm) multiplies chi by
gradual border               ``1 + h n`` with h ~ U(0.10, 0.35) (clipped to 0.25-1.9 x); around the lamina a halo of
                             iron-bearing tissue moves chi towards the DN value by ``f exp(-d / lambda)``, f ~ U(0.2,
                             0.6), lambda ~ U(0.6, 2.0) mm (d: distance to the lamina). Source: iron is unevenly
                             distributed in the DN in histology and 7 T QSM, and the nucleus has no crisp wall at
                             1 mm (partial volume of a 0.3-0.6 mm lamina). The truth label stays the lamina.
veins and sinuses            Per side with probability 0.5 a cerebellar vein (radius U(0.6, 1.4) mm, chi of venous
touching the DN              blood, 0.25-0.35 ppm) runs tangent to the lamina's outer surface (gap U(-0.3, 0.8) mm
                             from its crest, away from the hilum). The transverse-sigmoid sinus (radius U(3, 4.5) mm)
                             runs along the posterior-lateral cerebellar surface and is inside the brain mask with a
                             per-site probability 0.3-0.7 (generous masks keep it). Source: venous anatomy of the
                             posterior fossa (the DN lies next to the veins of the cerebellar hemisphere and the
                             lateral recess); deoxygenated blood is strongly paramagnetic (REFERENCE.md: veins 0.19-
                             0.3 ppm).
air-tissue and bone          Background sources outside the brain: mastoid air cells (3-6 cells per side around MNI
artefacts, residual          (+/-56, -38, -42), size x pneumatization factor U(0.3, 1.6)), ear canals, sphenoid sinus
background field             (air, delta chi +9.4 ppm vs tissue: air +0.36 ppm, tissue -9.05 ppm SI) and the petrous
                             bone (delta chi -2.0 ppm: cortical bone, Hopkins & Wehrli, Magn Reson Med 1997). Their
                             field is computed with the same dipole model on a 2 mm grid. Background removal leaves a
                             fraction alpha of it, per site U(0.01-0.06, 0.04-0.12) (imperfect SHARP/PDF-type
                             removal near strong sources; Schweser et al., Z Med Phys 2017), plus a smooth quadratic
                             residual of SD 0.002-0.005 ppm per site (SHARP-type removal leaves little of a smooth
                             field). The background field's gradient g dephases each voxel: magnitude
                             ``prod_i |sinc(f0 TE g_i dx_i)|`` (f0 = 42.58 Hz/ppm/T x B0, TE per site 10-25 ms); the
                             field noise grows as 1/magnitude and voxels below 0.2 leave the mask, as a
                             magnitude-thresholded mask does.
partial coverage             With a per-site probability 0.10-0.50 (thin 7 T and thick-slice slabs most often) the
                             slab's inferior edge lies U(-22, +2) mm from the DN centre: it always cuts the
                             cerebellum and in ~40 % of those cases the DN. The field below the slab is not measured
                             (inversion on the covered part only) and the arrays are cropped: the truth keeps only
                             the covered part of the DN, raters trace only what they see.
head size                    Head scale x (1 - 0.05 x clip((17 - age) / 6, 0, 1)) x N(1, 0.02), clipped to 0.86-1.08:
                             an 11-year-old's head is ~5 % smaller in linear size (head circumference ~53 vs ~56 cm;
                             WHO / Nellhaus charts).
head tilt                    Pitch ~ N(site mean -5..8, site SD 4-9) degrees, and with probability 0.12 a large
                             tilt of 15-25 degrees; roll and yaw ~ N(0, 4); each clipped to +/-25 degrees; rotation
                             about a point between cerebrum and cerebellum (MNI (0, -30, -10)) so the brain stays in
                             the field of view. B0 stays the scanner's: the dipole orientation relative to the head
                             changes with the tilt, as in a real scanner.
motion blur, ringing         Motion: per-site probability 0.10-0.45 (x 1.5 for FRDA patients and children under 16),
                             1-3 step translations of N(0, 0.6) mm per axis at random times of a linear
                             (partition-outer) k-space ordering: k-space lines acquired after a step carry the
                             phase ``exp(-2 pi i k.d)`` (the segment model of torchio's RandomMotion; ghosting and
                             blur). Ringing: sites C, F, H keep only the central 85 / 70 / 80 % of the phase-encode
                             k-space (zero-filled, no apodisation: Gibbs ringing and blur). Both act on the whole
                             field of view's field map before masking and inversion (the phase data are what is
                             acquired); positions are relative to the one at the k-space centre.
FRDA atrophy                 Disease onset U(5, 20) years (before the scan); cerebellar atrophy 0.02 + 0.003 x
                             duration + N(0, 0.01) (linear shrink, clipped 0-0.14), 4th ventricle semi-axes x (1 + 4 x
                             atrophy), DN target volume x clip(1 - 0.006 duration, 0.7, 1). Source: progressive DN
                             atrophy with rising susceptibility (Ward et al., Mov Disord 2019; Harding et al.,
                             IMAGE-FRDA, 2016), enlarged 4th ventricle (Selvadurai et al., 2016).
MS lesions near the DN       (The easy presets never drew their MS lesions: a float32/float64 comparison; hard cases
                             draw them.) MS subjects: with probability 0.6, 1-3 lesions (radii 1.5-3.5 mm) 0.5-4 mm
                             from the DN's outer surface in the deep cerebellar white matter, chi = WM + U(0.01,
                             0.05) ppm; 30 % are paramagnetic-rim lesions (1 mm rim at WM + U(0.05, 0.09) ppm) that
                             look like a DN crescent. Source: lesions become paramagnetic relative to white matter
                             within months (Chen et al., Radiology 2014), iron rims in chronic active lesions
                             (Absinta et al., 2016); cerebellar peduncles and deep cerebellar white matter are common
                             infratentorial sites.
raters, boundary             A rater's boundary field and per-scan threshold offset grow by ``1 + g clip(c_ref / c -
uncertainty                  1, 0, 3)`` (g = 1.5, c_ref = 0.10 ppm), c = the scan's DN-minus-surround contrast in ppm:
                             where the DN is faint, where exactly its edge is becomes a matter of opinion (edge
                             localisation error scales with noise / edge contrast).
===========================  ========================================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from .anatomy import (
    SubjectAnatomy,
    _ellipsoid,
    _segment_distance,
    _upsample_linear,
    dentate_scale_for_volume,
)
from .physics import forward_field

GYROMAGNETIC_HZ_PER_PPM_PER_T = 42.577  # gamma / 2 pi = 42.577 MHz/T -> 42.577 Hz per ppm per tesla
AIR_DELTA_CHI = 9.4  # ppm, air (+0.36) minus tissue (-9.05), SI volume susceptibility
BONE_DELTA_CHI = -2.0  # ppm, cortical bone relative to water/tissue
ROTATION_PIVOT_MNI = (0.0, -30.0, -10.0)
SINUS_PATH = [(0.0, -100.0, -24.0), (-20.0, -99.0, -26.0), (-40.0, -89.0, -28.0), (-52.0, -73.0, -32.0),
              (-53.0, -58.0, -40.0), (-48.0, -47.0, -52.0)]  # transverse -> sigmoid sinus, left; mirrored
MASTOID_CENTRE = (-56.0, -38.0, -42.0)
# the manifest columns a hard case adds (all numeric but the flags); see simulate_case
META_KEYS = ("hard_dn_contrast_ppm", "hard_dn_contrast_left_ppm", "hard_dn_contrast_right_ppm",
             "hard_vein_contact_mm", "hard_vein_contact_left_mm", "hard_vein_contact_right_mm",
             "hard_dn_coverage", "hard_dn_coverage_left", "hard_dn_coverage_right", "hard_cerebellum_coverage",
             "hard_partial_coverage", "hard_residual_field_ppm", "hard_dropout_fraction", "hard_head_tilt_deg",
             "hard_head_scale", "hard_motion_mm", "hard_ringing_keep", "hard_sinus_in_mask", "hard_atrophy",
             "hard_lesion_dn_mm", "hard_dn_heterogeneity", "hard_dn_halo")


@dataclass(frozen=True)
class HardSiteEffects:
    """Per-site hard-case settings (acquisition, cohort and pipeline habits of one site).

    Attributes:
        age_range: the cohort's ages (None: the group's range).
        pitch_mean_deg, pitch_sd_deg: head pitch (nod) distribution: head padding and coil habits.
        partial_coverage_probability: chance that the slab's inferior edge cuts the cerebellum.
        background_residual: range of the fraction of the near-source background field left by the site's
            background-field removal.
        poly_residual_ppm: SD of the smooth (quadratic) residual background field.
        te_ms: echo time used for the dephasing (signal dropout) near air.
        motion_probability: chance of a scan with head motion.
        ringing_keep: central fraction of the phase-encode k-space kept (1.0: no truncation ringing).
        sinus_in_mask_probability: chance that the brain mask includes the transverse/sigmoid sinus.
    """

    age_range: tuple[float, float] | None
    pitch_mean_deg: float
    pitch_sd_deg: float
    partial_coverage_probability: float
    background_residual: tuple[float, float]
    poly_residual_ppm: float
    te_ms: float
    motion_probability: float
    ringing_keep: float
    sinus_in_mask_probability: float


HARD_SITE_EFFECTS: dict[str, HardSiteEffects] = {
    # name: age range, pitch mean/SD, partial coverage p, residual background range, poly SD, TE, motion p,
    # ringing keep, sinus-in-mask p
    "siteA": HardSiteEffects(None, 0.0, 5.0, 0.10, (0.02, 0.06), 0.003, 20.0, 0.10, 1.0, 0.4),
    "siteB": HardSiteEffects(None, 6.0, 7.0, 0.35, (0.04, 0.10), 0.004, 25.0, 0.15, 1.0, 0.6),
    "siteC": HardSiteEffects(None, 0.0, 4.0, 0.50, (0.03, 0.08), 0.003, 12.0, 0.20, 0.85, 0.3),
    "siteD": HardSiteEffects((11.0, 22.0), -4.0, 9.0, 0.20, (0.03, 0.08), 0.003, 20.0, 0.45, 1.0, 0.5),
    "siteE": HardSiteEffects(None, 0.0, 6.0, 0.10, (0.01, 0.04), 0.002, 18.0, 0.10, 1.0, 0.7),
    "siteF": HardSiteEffects(None, 3.0, 7.0, 0.45, (0.04, 0.10), 0.004, 10.0, 0.15, 0.70, 0.3),
    "siteG": HardSiteEffects((18.0, 35.0), 8.0, 6.0, 0.15, (0.02, 0.06), 0.003, 20.0, 0.10, 1.0, 0.5),
    "siteH": HardSiteEffects(None, 0.0, 8.0, 0.25, (0.06, 0.12), 0.005, 22.0, 0.30, 0.80, 0.6),
    "siteI": HardSiteEffects(None, -3.0, 9.0, 0.30, (0.03, 0.08), 0.003, 25.0, 0.20, 1.0, 0.5),
}
DEFAULT_SITE_EFFECTS = HardSiteEffects(None, 0.0, 6.0, 0.2, (0.03, 0.08), 0.003, 20.0, 0.2, 1.0, 0.5)


@dataclass(frozen=True)
class HardCaseParams:
    """Global hard-case numbers (see the module docstring for their sources). The ``*_override`` fields force an
    effect for tests and figures (None: draw it)."""

    dn_chi_child_ppm: float = 0.045
    dn_chi_adult_ppm: float = 0.135
    dn_age_tau_years: float = 18.0
    dn_chi_sd_ppm: tuple[float, float] = (0.008, 0.0002)
    young_fraction: float = 0.25
    heterogeneity: tuple[float, float] = (0.10, 0.35)
    heterogeneity_mm: float = 2.5
    halo_fraction: tuple[float, float] = (0.2, 0.6)
    halo_mm: tuple[float, float] = (0.6, 2.0)
    vein_touch_probability: float = 0.5
    vein_radius_mm: tuple[float, float] = (0.6, 1.4)
    sinus_radius_mm: tuple[float, float] = (3.0, 4.5)
    pneumatization: tuple[float, float] = (0.3, 1.6)
    coverage_cut_mm: tuple[float, float] = (-22.0, 2.0)
    child_head_factor: float = 0.95
    head_scale_sd: float = 0.02
    large_tilt_probability: float = 0.12
    max_tilt_deg: float = 25.0
    motion_sd_mm: float = 0.6
    frda_atrophy_per_year: float = 0.003
    fourth_ventricle_gain: float = 4.0
    ms_near_dn_probability: float = 0.6
    ms_rim_probability: float = 0.3
    rater_low_contrast_gain: float = 1.5
    rater_reference_contrast_ppm: float = 0.10
    background: bool = True
    # forcing (tests, figures)
    age_override: float | None = None
    tilt_override_deg: tuple[float, float, float] | None = None
    partial_coverage_override: float | None = None
    motion_override: float | None = None
    vein_touch_override: float | None = None
    background_residual_override: float | None = None
    sinus_override: bool | None = None
    ringing_override: float | None = None


@dataclass
class HardDraw:
    """The hard-case values drawn for one case."""

    age: float
    head_factor: float
    rotation_deg: tuple[float, float, float]
    partial_coverage: bool
    coverage_cut_mm: float
    background_residual: float
    poly_coefficients: list[float]
    pneumatization: tuple[float, float]
    motion_events: list[tuple[float, tuple[float, float, float]]]
    ringing_keep: float
    sinus_in_mask: bool
    vein_touch: tuple[bool, bool]
    te_ms: float
    extra: dict[str, float] = field(default_factory=dict)

    def motion_mm(self) -> float:
        """Largest cumulative displacement (mm) of the motion steps (0: no motion)."""
        total, largest = np.zeros(3), 0.0
        for _, d in self.motion_events:
            total = total + np.asarray(d)
            largest = max(largest, float(np.linalg.norm(total)))
        return largest


def dn_chi_for_age(age: float, params: HardCaseParams) -> float:
    """Mean DN susceptibility (ppm, healthy) at ``age`` under the hard-case age model."""
    a, b, tau = params.dn_chi_child_ppm, params.dn_chi_adult_ppm, params.dn_age_tau_years
    return float(b - (b - a) * np.exp(-(max(age, 11.0) - 11.0) / tau))


def _draw_age(rng: np.random.Generator, group: str, site: HardSiteEffects, params: HardCaseParams) -> float:
    if params.age_override is not None:
        return float(params.age_override)
    low, high = {"healthy": (11.0, 64.0), "FRDA": (11.0, 60.0), "MS": (20.0, 64.0)}[group]
    if site.age_range is not None:
        lo, hi = max(low, site.age_range[0]), min(high, site.age_range[1])
        low, high = (lo, hi) if lo < hi else site.age_range
    elif group != "MS" and rng.random() < params.young_fraction:
        high = 18.0
    return float(rng.uniform(low, high))


def draw_case(rng: np.random.Generator, site_name: str, group: str, params: HardCaseParams) -> HardDraw:
    """Draw one case's hard-case values (age, head, pose, coverage, artefacts, motion, veins)."""
    site = HARD_SITE_EFFECTS.get(site_name, DEFAULT_SITE_EFFECTS)
    age = _draw_age(rng, group, site, params)
    head_factor = (1.0 - (1.0 - params.child_head_factor) * float(np.clip((17.0 - age) / 6.0, 0.0, 1.0))) \
        * float(rng.normal(1.0, params.head_scale_sd))
    pitch = float(rng.normal(site.pitch_mean_deg, site.pitch_sd_deg))
    if rng.random() < params.large_tilt_probability:
        pitch = float(np.sign(rng.random() - 0.5) * rng.uniform(15.0, params.max_tilt_deg))
    roll, yaw = float(rng.normal(0.0, 4.0)), float(rng.normal(0.0, 4.0))
    rotation = tuple(float(np.clip(a, -params.max_tilt_deg, params.max_tilt_deg)) for a in (pitch, roll, yaw))
    if params.tilt_override_deg is not None:
        rotation = tuple(float(a) for a in params.tilt_override_deg)
    p_cover = site.partial_coverage_probability if params.partial_coverage_override is None \
        else params.partial_coverage_override
    partial = bool(rng.random() < p_cover)
    cut = float(rng.uniform(*params.coverage_cut_mm))
    residual = float(rng.uniform(*site.background_residual)) if params.background_residual_override is None \
        else float(params.background_residual_override)
    poly = [float(c) for c in rng.normal(0.0, site.poly_residual_ppm, 9)]
    pneumatization = (float(rng.uniform(*params.pneumatization)), float(rng.uniform(*params.pneumatization)))
    p_motion = site.motion_probability * (1.5 if group == "FRDA" or age < 16 else 1.0)
    if params.motion_override is not None:
        p_motion = params.motion_override
    events = []
    if rng.random() < min(p_motion, 0.9):
        for _ in range(int(rng.integers(1, 4))):
            events.append((float(rng.uniform(0.2, 0.9)),
                           tuple(float(x) for x in rng.normal(0.0, params.motion_sd_mm, 3))))
        events.sort()
    sinus = bool(rng.random() < site.sinus_in_mask_probability) if params.sinus_override is None \
        else bool(params.sinus_override)
    p_vein = params.vein_touch_probability if params.vein_touch_override is None else params.vein_touch_override
    touch = (bool(rng.random() < p_vein), bool(rng.random() < p_vein))
    ringing = site.ringing_keep if params.ringing_override is None else float(params.ringing_override)
    return HardDraw(age, head_factor, rotation, partial, cut, residual, poly,  # type: ignore[arg-type]
                    pneumatization, events, ringing, sinus, touch, site.te_ms)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _surface_point(dn, dn_scale: float, rng: np.random.Generator, away_from_hilum: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A point on the DN lamina's outer surface (MNI mm) and the outward normal there, away from the hilum."""
    rot = dn.rotation()
    a = np.asarray(dn.semi_axes) * dn_scale
    for _ in range(50):
        direction = _unit(rng.normal(0.0, 1.0, 3))
        if not away_from_hilum or direction[0] < 0.2:  # local u > 0 is the anteromedial hilum opening
            break
    radii = np.linspace(0.5, 1.5, 101, dtype=np.float32)
    p = (direction[:, None] * radii[None, :]).astype(np.float32)
    lamina, _ = dn.classify_normalized(p[0], p[1], p[2], dn_scale)
    r_out = float(radii[np.flatnonzero(lamina)[-1]]) if lamina.any() else 1.0
    local = direction * a * r_out
    normal_local = _unit(direction / a)
    return np.asarray(dn.centre) + rot @ local, _unit(rot @ normal_local)


def apply_to_subject(subject: SubjectAnatomy, draw: HardDraw, params: HardCaseParams,
                     rng: np.random.Generator) -> None:
    """Turn an easy subject into a hard one (in place): age model of DN iron, heterogeneity and border, head size
    and tilt, FRDA atrophy, MS lesions near the DN, veins touching the DN, sinus in the mask."""
    old_rotation = subject.rotation_matrix()
    old_scale = subject.scale.copy()
    # head size and pose (rotation about a pivot between cerebrum and cerebellum)
    subject.scale = np.clip(subject.scale * draw.head_factor, 0.86, 1.08)
    subject.rotation_deg = np.asarray(draw.rotation_deg, float)
    pivot = np.asarray(ROTATION_PIVOT_MNI)
    subject.translation_mm = subject.translation_mm + old_rotation @ (pivot * old_scale) \
        - subject.rotation_matrix() @ (pivot * subject.scale)
    # DN iron: age model + between-subject SD (+ the FRDA excess the easy draw gave)
    sd = params.dn_chi_sd_ppm[0] + params.dn_chi_sd_ppm[1] * max(draw.age - 11.0, 0.0)
    new_chi = dn_chi_for_age(draw.age, params) + float(rng.normal(0.0, sd))
    if subject.group == "FRDA":
        new_chi += float(rng.uniform(0.015, 0.035))
    old_chi = subject.chi["dentate"]
    subject.chi["dentate"] = new_chi
    for dn in subject.dentates:
        dn.chi = float(dn.chi - old_chi + new_chi)
    subject.lesions_in_float32_white_matter = True  # draw the MS lesions (see SubjectAnatomy)
    subject.dn_heterogeneity = float(rng.uniform(*params.heterogeneity))
    subject.dn_heterogeneity_mm = params.heterogeneity_mm
    subject.dn_halo = (float(rng.uniform(*params.halo_fraction)), float(rng.uniform(*params.halo_mm)))
    # FRDA: atrophy grows with disease duration
    targets = [dn.target_volume_mm3 for dn in subject.dentates]
    if subject.group == "FRDA":
        onset = float(min(rng.uniform(5.0, 20.0), draw.age - 2.0))
        duration = draw.age - onset
        subject.cerebellar_atrophy = float(np.clip(0.02 + params.frda_atrophy_per_year * duration
                                                   + rng.normal(0.0, 0.01), 0.0, 0.14))
        subject.fourth_ventricle_gain = params.fourth_ventricle_gain
        shrink = float(np.clip(1.0 - 0.006 * duration, 0.7, 1.0))
        targets = [t * shrink for t in targets]
        draw.extra["frda_duration_years"] = duration
    for dn, target in zip(subject.dentates, targets, strict=True):
        dn.target_volume_mm3 = float(target)
    subject.dentate_scales = [dentate_scale_for_volume(dn, t / float(np.prod(subject.scale)))
                              for dn, t in zip(subject.dentates, targets, strict=True)]
    # veins touching the DN (cerebellar hemispheric veins, vein of the lateral recess)
    for dn, dn_scale, touch in zip(subject.dentates, subject.dentate_scales, draw.vein_touch, strict=True):
        if not touch:
            continue
        point, normal = _surface_point(dn, dn_scale, rng)
        radius = float(rng.uniform(*params.vein_radius_mm))
        centre = point + normal * (radius + float(rng.uniform(-0.3, 0.8)))
        tangent = _unit(np.cross(normal, rng.normal(0.0, 1.0, 3)))
        half = float(rng.uniform(8.0, 15.0))
        subject.extra_veins.append(([tuple(centre - half * tangent), tuple(centre + half * tangent)], radius))
    # dural sinus in the mask
    if draw.sinus_in_mask:
        radius = float(rng.uniform(*params.sinus_radius_mm))
        for sign in (1.0, -1.0):
            path = [(sign * x, y, z) for x, y, z in SINUS_PATH]
            subject.sinuses.append((path, radius))
    # MS: lesions next to the DN, some with a paramagnetic rim
    if subject.group == "MS" and rng.random() < params.ms_near_dn_probability:
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(0, 2))
            dn, dn_scale = subject.dentates[side], subject.dentate_scales[side]
            point, normal = _surface_point(dn, dn_scale, rng)
            radii = rng.uniform(1.5, 3.5, 3)
            centre = point + normal * (float(np.max(radii)) + float(rng.uniform(0.5, 4.0)))
            core = float(rng.uniform(0.01, 0.05))
            if rng.random() < params.ms_rim_probability:
                subject.rim_lesions.append((centre, radii, core, float(rng.uniform(0.05, 0.09)), 1.0))
            else:
                subject.lesions.append((centre, radii, core))


# ---------------------------------------------------------------------------------------------------------
# Background field, dropout, motion, ringing


def _coarse_axes(origin: np.ndarray, voxel: np.ndarray, shape: tuple[int, int, int]
                 ) -> tuple[list[np.ndarray], np.ndarray, tuple[int, int, int]]:
    stride = np.maximum(1, np.round(2.0 / voxel)).astype(int)
    n = [int(np.ceil(shape[i] / stride[i])) + 1 for i in range(3)]
    axes = [origin[i] + voxel[i] * stride[i] * np.arange(n[i]) for i in range(3)]
    return axes, stride, tuple(n)  # type: ignore[return-value]


def _to_site_grid(coarse: np.ndarray, stride: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    out = coarse
    for axis, s in enumerate(stride):
        out = _upsample_linear(out, int(s), axis)
    return np.ascontiguousarray(out[: shape[0], : shape[1], : shape[2]], dtype=np.float32)


def background_sources(subject: SubjectAnatomy, axes: list[np.ndarray], draw: HardDraw) -> np.ndarray:
    """Susceptibility (ppm, relative to tissue) of air cells, sinuses and bone on a world grid (1D axes)."""
    mx, my, mz = subject.world_to_mni(*axes)
    chi = np.zeros(mx.shape, np.float32)
    rng = np.random.default_rng([subject.texture_seed, 23])
    for side, sign in enumerate((1.0, -1.0)):  # mastoid air cells, pneumatization per side
        size = draw.pneumatization[side] ** (1.0 / 3.0)
        for _ in range(int(rng.integers(3, 7))):
            c = np.array([sign * MASTOID_CENTRE[0], MASTOID_CENTRE[1], MASTOID_CENTRE[2]]) + rng.normal(0, 5.0, 3)
            chi[_ellipsoid(mx, my, mz, c, rng.uniform(3.0, 7.0, 3) * size) < 1.0] = AIR_DELTA_CHI
        canal = _segment_distance(mx, my, mz, (sign * -56.0, -20.0, -30.0), (sign * -75.0, -20.0, -30.0))
        chi[canal < 4.0] = AIR_DELTA_CHI
        petrous = _segment_distance(mx, my, mz, (sign * -15.0, -15.0, -34.0), (sign * -50.0, -33.0, -40.0))
        chi[(petrous < 6.0) & (chi == 0)] = BONE_DELTA_CHI
    chi[_ellipsoid(mx, my, mz, (0.0, 12.0, -30.0), (12.0, 10.0, 9.0)) < 1.0] = AIR_DELTA_CHI  # sphenoid sinus
    return chi


def residual_background(subject: SubjectAnatomy, draw: HardDraw, brain: np.ndarray, origin: np.ndarray,
                        voxel: tuple[float, float, float], b0: np.ndarray, field_strength: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(residual background field in ppm, magnitude 0..1) on the site grid.

    The near-source background field is computed on a ~2 mm grid with the dipole model; a fraction
    ``draw.background_residual`` of it plus a smooth quadratic field is what background removal left. The
    magnitude is the intravoxel dephasing loss of the full background field at the site's TE.
    """
    voxel_arr = np.asarray(voxel, float)
    shape = brain.shape
    axes, stride, n = _coarse_axes(np.asarray(origin, float), voxel_arr, shape)  # type: ignore[arg-type]
    sources = background_sources(subject, axes, draw)
    brain_coarse = np.zeros(n, bool)
    sub = brain[:: stride[0], :: stride[1], :: stride[2]]
    brain_coarse[: sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub
    sources[brain_coarse] = 0.0
    coarse_spacing = tuple(float(v) for v in voxel_arr * stride)
    bg = forward_field(sources, coarse_spacing, b0)  # type: ignore[arg-type]
    grads = np.gradient(bg, *coarse_spacing)
    f0_te = GYROMAGNETIC_HZ_PER_PPM_PER_T * field_strength * draw.te_ms / 1000.0
    magnitude = np.ones(n, np.float32)
    for g, dx in zip(grads, voxel_arr, strict=True):
        magnitude *= np.abs(np.sinc(f0_te * g * dx)).astype(np.float32)
    # smooth quadratic residual (normalised coordinates, 70 mm ~ 1)
    cx = ((axes[0] - axes[0].mean()) / 70.0)[:, None, None]
    cy = ((axes[1] - axes[1].mean()) / 70.0)[None, :, None]
    cz = ((axes[2] - axes[2].mean()) / 70.0)[None, None, :]
    c = draw.poly_coefficients
    poly = (c[0] * cx + c[1] * cy + c[2] * cz + c[3] * cx * cx + c[4] * cy * cy + c[5] * cz * cz
            + c[6] * cx * cy + c[7] * cx * cz + c[8] * cy * cz).astype(np.float32)
    residual = np.float32(draw.background_residual) * bg + poly
    return _to_site_grid(residual, stride, shape), np.clip(_to_site_grid(magnitude, stride, shape), 0.0, 1.0)


def kspace_corrupt(image: np.ndarray, voxel: tuple[float, float, float], draw: HardDraw,
                   magnitude: np.ndarray | None = None, rad_per_ppm: float = 1.0) -> np.ndarray:
    """Motion (step translations between k-space segments) and truncation ringing applied in k-space.

    Phase-encode axes are y (lines, inner loop) and z (partitions, outer loop); the readout is x. A line's
    acquisition time is its position in a linear ordering, partition by partition. Displacements are relative to
    the head position when the k-space centre is acquired, so the image stays registered to the anatomy (and
    its labels) and the motion shows as ghosting and blur.

    Without ``magnitude`` the real ``image`` itself is corrupted. With it, ``image`` is a field map (ppm) and what
    is corrupted is the complex signal ``magnitude exp(i rad_per_ppm field)``, as acquired: the returned field is
    ``field + angle(S' conj(S)) / rad_per_ppm`` (no signal, no ringing from the huge fields inside air)."""
    if not draw.motion_events and draw.ringing_keep >= 1.0:
        return image
    if magnitude is not None:
        signal = magnitude.astype(np.float32) * np.exp(np.complex64(1j * rad_per_ppm) * image.astype(np.float32))
        corrupted = _corrupt_spectrum(sfft.fftn(signal.astype(np.complex64), workers=1), voxel, draw)
        error = np.angle(sfft.ifftn(corrupted, workers=1) * np.conj(signal)).astype(np.float32)
        return (image + error / np.float32(rad_per_ppm)).astype(np.float32)
    spectrum = _corrupt_spectrum(sfft.fftn(image.astype(np.complex64), workers=1), voxel, draw)
    return np.real(sfft.ifftn(spectrum, workers=1)).astype(np.float32)


def _corrupt_spectrum(spectrum: np.ndarray, voxel: tuple[float, float, float], draw: HardDraw) -> np.ndarray:
    nx, ny, nz = spectrum.shape
    kx = sfft.fftfreq(nx, d=voxel[0]).astype(np.float32)[:, None, None]
    ky = sfft.fftfreq(ny, d=voxel[1]).astype(np.float32)[None, :, None]
    kz = sfft.fftfreq(nz, d=voxel[2]).astype(np.float32)[None, None, :]
    if draw.ringing_keep < 1.0:
        keep_y = np.abs(sfft.fftfreq(ny)) <= 0.5 * draw.ringing_keep
        keep_z = np.abs(sfft.fftfreq(nz)) <= 0.5 * draw.ringing_keep
        spectrum *= (keep_y[None, :, None] & keep_z[None, None, :])
    if draw.motion_events:
        order_y = np.argsort(np.argsort(sfft.fftfreq(ny)))  # acquisition index of each stored line (-k .. +k)
        order_z = np.argsort(np.argsort(sfft.fftfreq(nz)))
        time = (order_z[None, :] + order_y[:, None] / ny) / nz  # (ny, nz) in 0..1
        total = np.zeros(3)
        shift = np.zeros((ny, nz, 3), np.float32)
        for t, d in draw.motion_events:
            total = total + np.asarray(d)
            shift[time >= t] = total
        shift -= shift[0, 0]  # the k-space centre (stored at index 0) defines the reference position
        phase = kx * shift[None, :, :, 0] + ky * shift[None, :, :, 1] + kz * shift[None, :, :, 2]
        spectrum *= np.exp(np.complex64(-2j * np.pi) * phase.astype(np.float32))
    return spectrum


def head_magnitude(brain: np.ndarray, dephasing: np.ndarray, voxel: tuple[float, float, float]) -> np.ndarray:
    """Signal magnitude for the k-space corruption: the brain and a ~3 mm smooth rim of surrounding tissue (no
    signal in air), times the dephasing loss."""
    sigma = [3.0 / v for v in voxel]
    head = np.clip(2.0 * ndimage.gaussian_filter(brain.astype(np.float32), sigma), 0.0, 1.0)
    return (head * dephasing).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Measurements written to the manifest


def ring_contrast(image: np.ndarray, labels: np.ndarray, side: int, brain: np.ndarray) -> float:
    """DN mean minus the median of a 2-4 voxel ring around it (same units as ``image``); NaN if absent."""
    mask = labels == side
    if not mask.any():
        return float("nan")
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 6, 0), np.minimum(idx.max(0) + 7, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    m = mask[box]
    ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m, iterations=1)
    ring &= brain[box] & (labels[box] == 0)
    if not ring.any():
        return float("nan")
    return float(image[box][m].mean() - np.median(image[box][ring]))


def vein_contact(dentate: np.ndarray, vein: np.ndarray, spacing: np.ndarray, side: int,
                 limit_mm: float = 15.0) -> tuple[float, np.ndarray | None]:
    """(smallest distance in mm from the DN lamina of ``side`` to a vein/sinus voxel, voxel index of the DN voxel
    where it is smallest); ``limit_mm`` and None when no vein is that near, NaN and None without that DN.

    The distance is centre-to-centre minus one voxel: 0 means a vein voxel touches a DN voxel."""
    mask = dentate == side
    if not mask.any():
        return float("nan"), None
    idx = np.argwhere(mask)
    margin = np.ceil(limit_mm / spacing).astype(int)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + margin + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    if not vein[box].any():
        return float(limit_mm), None
    distance = ndimage.distance_transform_edt(~vein[box], sampling=spacing)
    inside = np.where(mask[box], distance, np.inf)
    where = np.unravel_index(int(np.argmin(inside)), inside.shape)
    gap = float(min(limit_mm, max(0.0, float(inside[where]) - float(np.min(spacing)))))
    return gap, np.asarray(where) + lo


def vein_contact_mm(dentate: np.ndarray, vein: np.ndarray, spacing: np.ndarray, side: int,
                    limit_mm: float = 15.0) -> float:
    """Smallest distance (mm) from the DN lamina of ``side`` to a vein/sinus voxel (see :func:`vein_contact`)."""
    return vein_contact(dentate, vein, spacing, side, limit_mm)[0]


def lesion_distance_mm(subject: SubjectAnatomy) -> float:
    """Smallest distance (MNI mm) from an MS lesion's edge to a DN centre minus the DN's mean semi-axis
    (an approximate lesion-to-DN gap; NaN without lesions)."""
    centres = [(np.asarray(c), float(np.max(r))) for c, r, *_ in [*subject.lesions, *subject.rim_lesions]]
    if not centres:
        return float("nan")
    gaps = []
    for dn, s in zip(subject.dentates, subject.dentate_scales, strict=True):
        reach = float(np.mean(dn.semi_axes)) * s
        gaps += [float(np.linalg.norm(c - np.asarray(dn.centre)) - r - reach) for c, r in centres]
    return max(0.0, min(gaps))


def tilt_angle_deg(subject: SubjectAnatomy) -> float:
    """Total rotation angle (degrees) of the head relative to the image axes."""
    rot = subject.rotation_matrix()
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def draw_summary(draw: HardDraw) -> dict[str, object]:
    """JSON-friendly record of a draw (for dataset_summary.json / debugging)."""
    out = asdict(draw)
    out["motion_mm"] = draw.motion_mm()
    return out
