"""Generate a synthetic multi-site QSM data set: images, true and rater DN labels, cerebellum masks, manifest.

Pipeline per case (deterministic from ``(seed, site index, subject index)``):
anatomy on a fine grid (site voxel / integer factor) -> dipole field (FFT forward model, B0 tilted per site)
-> partial-volume block average to the site grid -> field noise -> dipole inversion (TKD / L2) -> site
smoothing, gain, zero-reference offset, units -> simulated rater tracings -> NIfTI files (site orientation).

Presets with ``hard`` set (``hard``, ``hard_tiny``, ``hard_cut``) add the hard cases of real QSM (module ``hard``):
the subject's anatomy is changed after it is drawn, a residual background field and dephasing noise enter the field,
the mask loses dropout voxels and the part below a partial slab, motion and ringing act on k-space, raters grow
unsure at low contrast, and a partially covered case is cropped to its slab. Their factors go to the manifest
(``hard_*``).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..io import DataError, save_nifti
from ..labels import DN_SIDES, LEFT_DN, RIGHT_DN
from ..manifest import Case, write_manifest
from ..units import ppm_factor
from . import hard as hard_cases
from .anatomy import GROUPS, render_subject, sample_subject
from .hard import HardCaseParams
from .physics import b0_direction, block_average, forward_field, gaussian_smooth, reconstruct
from .raters import RATER_STYLES, simulate_tracing
from .sites import SITE_PROFILES, SiteProfile

# World field of view (RAS mm) that holds the whole brain for all poses: [min, max] per axis.
FOV_MM = ((-80.0, 80.0), (-118.0, 84.0), (-78.0, 90.0))
# Group sequence cycled per site (offset by the site index): ~43 % healthy, like the paper's 141/328.
GROUP_CYCLE = ("healthy", "FRDA", "MS", "healthy", "FRDA", "healthy", "FRDA")


@dataclass(frozen=True)
class Preset:
    """Size preset.

    Attributes:
        name: preset name.
        n_subjects_per_site: subjects per site (int) or one count per site in SITE_PROFILES order.
        in_plane_mm: site voxel size override: in-plane size (mm); slices keep the site's aspect ratio,
            capped at ``max_slice_mm``. None: the site's real voxel size.
        max_slice_mm: cap on the slice thickness when ``in_plane_mm`` is set.
        fine_mm: largest fine-grid spacing used for the anatomy and the forward model (mm); the fine grid
            is the site grid divided by integer factors, so partial volume is an exact block average.
        retrace_every: every n-th case (per site) is traced a second time by rater1.
        hard: hard-case effects (module ``hard``: low-iron DN, veins at the DN, air/bone artefacts, partial
            coverage, head size and tilt, motion and ringing, FRDA atrophy, MS lesions near the DN, raters
            unsure at low contrast); None (the default) leaves the preset's arrays exactly as before.
    """

    name: str
    n_subjects_per_site: int | tuple[int, ...]
    in_plane_mm: float | None
    max_slice_mm: float
    fine_mm: float
    retrace_every: int = 3
    hard: HardCaseParams | None = None


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", (2, 2, 2, 1, 1, 1, 1, 1, 1), 2.0, 3.0, 2.0, retrace_every=2),
    "small": Preset("small", 5, 1.5, 3.0, 1.0),
    # 1 mm in-plane, slices up to 2 mm (the sites' own aspect ratios), 10 subjects per site: the CPU study and the
    # shipped default model (segmentation at native ~1 mm resolution, like the paper's 1 mm crops).
    "cpu": Preset("cpu", 10, 1.0, 2.0, 1.0),
    "paper": Preset("paper", (40, 40, 36, 36, 36, 36, 36, 34, 34), None, 2.0, 1.0),
    # The hard cases of real QSM (module ``hard``) at the ``cpu`` preset's resolution, and at ``tiny``'s for tests.
    "hard": Preset("hard", 10, 1.0, 2.0, 1.0, hard=HardCaseParams()),
    "hard_tiny": Preset("hard_tiny", 1, 2.0, 3.0, 2.0, retrace_every=2, hard=HardCaseParams()),
    # Training data for partial coverage: every slab's inferior edge lies U(-8, +3) mm from the DN centre, so that
    # nearly every scan loses the lower part of the nuclei (``hard``: 35 of 300 scans of seeds 0, 2, 3, 4 lose part
    # of a DN, 13 more than half). The rest of the hard cases as in ``hard``.
    "hard_cut": Preset("hard_cut", 10, 1.0, 2.0, 1.0,
                       hard=HardCaseParams(partial_coverage_override=1.0, coverage_cut_mm=(-8.0, 3.0))),
}


@dataclass
class CaseResult:
    """One written case, its generation time (s), DN volumes per rater and side (mm^3) and DN mean (ppm)."""

    case: Case
    seconds: float
    volumes_mm3: dict[str, dict[int, float]] = field(default_factory=dict)
    dn_mean_ppm: float = float("nan")


def site_voxel_size(profile: SiteProfile, preset: Preset) -> tuple[float, float, float]:
    """Voxel size (mm) of a site under a preset."""
    if preset.in_plane_mm is None:
        return tuple(float(v) for v in profile.voxel_size)  # type: ignore[return-value]
    ratio = profile.voxel_size[2] / profile.voxel_size[0]
    slice_mm = float(min(preset.in_plane_mm * ratio, preset.max_slice_mm))
    return (preset.in_plane_mm, preset.in_plane_mm, slice_mm)


def _grid(voxel: tuple[float, float, float], fine_mm: float):
    """Site grid (shape, origin of voxel centre 0) and fine grid (factors, spacing, origin)."""
    voxel_arr = np.asarray(voxel, float)
    lo = np.array([f[0] for f in FOV_MM])
    hi = np.array([f[1] for f in FOV_MM])
    shape = np.ceil((hi - lo) / voxel_arr).astype(int)
    shape += shape % 2  # even sizes
    centre = 0.5 * (lo + hi)
    origin = centre - 0.5 * (shape - 1) * voxel_arr
    factors = np.maximum(1, np.ceil(voxel_arr / fine_mm - 1e-6)).astype(int)
    fine_spacing = voxel_arr / factors
    fine_origin = origin - 0.5 * voxel_arr + 0.5 * fine_spacing
    return tuple(int(s) for s in shape), origin, tuple(int(f) for f in factors), fine_spacing, fine_origin


def _affine(origin: np.ndarray, voxel: tuple[float, float, float]) -> np.ndarray:
    affine = np.diag([*voxel, 1.0]).astype(float)
    affine[:3, 3] = origin
    return affine


def save_oriented(array: np.ndarray, affine_ras: np.ndarray, path: Path, orientation: str,
                  is_label: bool = False) -> Path:
    """Save a canonical-RAS array in another voxel order (e.g. 'LAS', 'LPS') with the matching affine."""
    target = nib.orientations.axcodes2ornt(tuple(orientation))
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), target)
    data = nib.orientations.apply_orientation(array, transform)
    affine = affine_ras @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return save_nifti(np.ascontiguousarray(data), affine, path, is_label=is_label)


def volume_preserving_mask(fraction: np.ndarray) -> np.ndarray:
    """Binary mask of the N voxels with the largest partial-volume fraction, N = round(sum of fractions).

    The label volume then equals the continuous structure volume (a thin lamina cut at 50 % would lose a large
    share of its volume on thick slices); voxels below 10 % are never included. Ties break by voxel order.
    """
    flat = fraction.ravel()
    n = int(round(float(flat.sum(dtype=np.float64))))
    mask = np.zeros(flat.shape, bool)
    if n > 0:
        order = np.argsort(-flat, kind="stable")[:n]
        mask[order] = True
        mask &= flat >= 0.1
    return mask.reshape(fraction.shape)


def simulate_case(site_index: int, subject_index: int, profile: SiteProfile, preset: Preset, seed: int,
                  group: str) -> dict[str, object]:
    """Simulate one scan; returns arrays on the site grid (canonical RAS) and metadata (no file I/O)."""
    rng = np.random.default_rng([seed, site_index, subject_index])
    params = preset.hard
    if params is None:
        subject = sample_subject(rng, group)
    else:  # hard cases draw from their own stream: the easy presets' streams stay untouched
        hard_rng = np.random.default_rng([seed, site_index, subject_index, 7001])
        draw = hard_cases.draw_case(hard_rng, profile.name, group, params)
        subject = sample_subject(rng, group, age=draw.age)
        hard_cases.apply_to_subject(subject, draw, params, hard_rng)
    voxel = site_voxel_size(profile, preset)
    shape, origin, factors, fine_spacing, fine_origin = _grid(voxel, preset.fine_mm)
    fine_shape = tuple(s * f for s, f in zip(shape, factors, strict=True))
    anatomy = render_subject(subject, fine_origin, fine_spacing, fine_shape,  # type: ignore[arg-type]
                             with_veins=params is not None)
    b0 = b0_direction(profile.b0_tilt_deg + rng.normal(0, 1.0), profile.b0_azimuth_deg)
    field_fine = forward_field(anatomy.chi, tuple(fine_spacing), b0)  # type: ignore[arg-type]
    field = block_average(field_fine, factors)
    del field_fine
    chi_true = block_average(anatomy.chi, factors)
    brain = block_average(anatomy.brain, factors) > 0.5
    pv_left = block_average(anatomy.dentate == LEFT_DN, factors)
    pv_right = block_average(anatomy.dentate == RIGHT_DN, factors)
    cerebellum = block_average(anatomy.cerebellum, factors) > 0.5
    # Field noise: SD per voxel grows as the voxel shrinks (relative to 1 mm^3).
    noise_sd = profile.field_noise_ppm / np.sqrt(float(np.prod(voxel)))
    if params is None:
        field = field + rng.normal(0, noise_sd, field.shape).astype(np.float32)
    else:
        hard_extra = _hard_field(subject, draw, params, profile, field, brain, origin, voxel, b0, rng, noise_sd)
        field, brain, covered = hard_extra.pop("field"), hard_extra.pop("mask"), hard_extra.pop("covered")
    qsm = reconstruct(field, brain, voxel, b0, profile.reconstruction, tkd_threshold=profile.recon_param,
                      regularization=profile.recon_param)
    qsm = gaussian_smooth(qsm, profile.smooth_fwhm_mm, voxel)
    qsm = np.where(brain, profile.gain * qsm + profile.offset_ppm, 0.0).astype(np.float32)
    dn_true = np.zeros(shape, np.uint8)
    dn_true[volume_preserving_mask(pv_left)] = LEFT_DN
    dn_true[volume_preserving_mask(pv_right) & (dn_true == 0)] = RIGHT_DN
    styles = RATER_STYLES
    if params is not None:  # raters see only the covered slab and are less sure where the contrast is low
        pv_left, pv_right = pv_left * covered, pv_right * covered
        styles = {name: replace(style, low_contrast_gain=params.rater_low_contrast_gain,
                                reference_contrast_ppm=params.rater_reference_contrast_ppm)
                  for name, style in RATER_STYLES.items()}
    raters = {}
    retrace = subject_index % preset.retrace_every == 0
    for name, style in styles.items():
        if name == "rater1_retrace" and not retrace:
            continue
        session_rng = np.random.default_rng([seed, site_index, subject_index,
                                             1 + list(RATER_STYLES).index(name)])
        reading_rng = np.random.default_rng([seed, site_index, subject_index, 100 + sorted(
            {s.person for s in RATER_STYLES.values()}).index(style.person)])
        raters[name] = simulate_tracing(pv_left, pv_right, qsm, voxel, style, session_rng, reading_rng)
    voxel_volume = float(np.prod(voxel))
    dn_chi_true = float(np.mean([d.chi for d in subject.dentates]))
    out = {
        "qsm": qsm, "chi_true": chi_true, "brain": brain, "dn_true": dn_true, "raters": raters,
        "cerebellum": cerebellum, "affine": _affine(origin, voxel), "voxel": voxel, "subject": subject,
        "dn_volume_left_mm3": float((dn_true == LEFT_DN).sum() * voxel_volume),
        "dn_volume_right_mm3": float((dn_true == RIGHT_DN).sum() * voxel_volume),
        "dn_chi_true_ppm": dn_chi_true, "b0": b0, "factors": factors,
    }
    if params is not None:
        _finish_hard_case(out, subject, draw, anatomy, fine_spacing, covered, hard_extra)
    return out


def _hard_field(subject, draw, params: HardCaseParams, profile: SiteProfile, field: np.ndarray, brain: np.ndarray,
                origin: np.ndarray, voxel: tuple[float, float, float], b0: np.ndarray, rng: np.random.Generator,
                noise_sd: float) -> dict[str, object]:
    """Hard cases: residual background field, noise that grows where the signal dephases, a mask that loses the
    dropout voxels and the part of the head below the slab. Returns field, mask, covered (z profile 0/1) and
    measurements."""
    if params.background:
        residual, magnitude = hard_cases.residual_background(subject, draw, brain, origin, voxel, b0,
                                                             profile.field_strength)
    else:
        residual, magnitude = np.zeros(field.shape, np.float32), np.ones(field.shape, np.float32)
    noise = rng.normal(0, noise_sd, field.shape).astype(np.float32)
    field = field + residual + noise / np.maximum(magnitude, np.float32(0.1))
    # motion and ringing act on the acquired complex signal (k-space of the whole field of view, before any mask)
    if draw.motion_events or draw.ringing_keep < 1.0:
        rad_per_ppm = 2 * np.pi * hard_cases.GYROMAGNETIC_HZ_PER_PPM_PER_T * profile.field_strength * draw.te_ms / 1e3
        field = hard_cases.kspace_corrupt(field, voxel, draw, hard_cases.head_magnitude(brain, magnitude, voxel),
                                          rad_per_ppm)
    mask = brain & (magnitude > 0.2)
    covered = np.ones(field.shape[2], np.float32)
    z_lo = 0
    if draw.partial_coverage:
        dn_z = float(np.mean([subject.mni_to_world(np.asarray(d.centre))[2] for d in subject.dentates]))
        z_world = origin[2] + voxel[2] * np.arange(field.shape[2])
        covered = (z_world >= dn_z + draw.coverage_cut_mm).astype(np.float32)
        z_lo = int(np.argmax(covered > 0)) if covered.any() else 0
        mask = mask & (covered[None, None, :] > 0)
    return {"field": field, "mask": mask, "covered": covered[None, None, :], "z_lo": z_lo,
            "residual": residual, "magnitude": magnitude}


def _finish_hard_case(out: dict[str, object], subject, draw, anatomy, fine_spacing: np.ndarray,
                      covered: np.ndarray, extra: dict[str, object]) -> None:
    """Measure the hard-case factors of a simulated case and crop a partially covered one to its slab."""
    dn_full = out["dn_true"]
    cerebellum_full = out["cerebellum"]
    residual, magnitude = extra["residual"], extra["magnitude"]
    in_cb = cerebellum_full.astype(bool)
    voxel = out["voxel"]
    z_lo = int(extra["z_lo"])
    if z_lo > 0:  # the scan ends at the slab: crop every array, shift the affine
        for key in ("qsm", "chi_true", "brain", "dn_true", "cerebellum"):
            out[key] = np.ascontiguousarray(out[key][:, :, z_lo:])
        out["raters"] = {k: np.ascontiguousarray(v[:, :, z_lo:]) for k, v in out["raters"].items()}
        affine = out["affine"].copy()
        affine[2, 3] += z_lo * voxel[2]
        out["affine"] = affine
    dn = out["dn_true"]
    voxel_volume = float(np.prod(voxel))
    out["dn_volume_left_mm3"] = float((dn == LEFT_DN).sum() * voxel_volume)
    out["dn_volume_right_mm3"] = float((dn == RIGHT_DN).sum() * voxel_volume)
    contrast = [hard_cases.ring_contrast(out["qsm"], dn, side, out["brain"]) for side in DN_SIDES]
    contacts = [hard_cases.vein_contact(anatomy.dentate, anatomy.vein, np.asarray(fine_spacing), side)
                for side in DN_SIDES]
    contact = [c[0] for c in contacts]
    fine_origin = out["affine"][:3, 3] - 0.5 * np.asarray(voxel) + 0.5 * np.asarray(fine_spacing)
    if z_lo > 0:  # the fine grid started at the uncropped origin
        fine_origin[2] -= z_lo * voxel[2]
    out["hard_contact_points_mm"] = {side: None if c[1] is None else fine_origin + c[1] * np.asarray(fine_spacing)
                                     for side, c in zip(DN_SIDES, contacts, strict=True)}
    coverage = [float((dn == side).sum() / max((dn_full == side).sum(), 1)) for side in DN_SIDES]
    meta = {
        "hard_dn_contrast_ppm": float(np.nanmean(contrast)) if np.isfinite(contrast).any() else float("nan"),
        "hard_dn_contrast_left_ppm": contrast[0], "hard_dn_contrast_right_ppm": contrast[1],
        "hard_vein_contact_mm": float(np.nanmin(contact)) if np.isfinite(contact).any() else float("nan"),
        "hard_vein_contact_left_mm": contact[0], "hard_vein_contact_right_mm": contact[1],
        "hard_dn_coverage": min(coverage), "hard_dn_coverage_left": coverage[0],
        "hard_dn_coverage_right": coverage[1],
        "hard_cerebellum_coverage": float(out["cerebellum"].sum() / max(cerebellum_full.sum(), 1)),
        "hard_partial_coverage": int(draw.partial_coverage),
        "hard_residual_field_ppm": float(np.sqrt(np.mean(residual[in_cb] ** 2))) if in_cb.any() else 0.0,
        "hard_dropout_fraction": float(np.mean(magnitude[in_cb] <= 0.2)) if in_cb.any() else 0.0,
        "hard_head_tilt_deg": hard_cases.tilt_angle_deg(subject),
        "hard_head_scale": float(np.mean(subject.scale)),
        "hard_motion_mm": draw.motion_mm(),
        "hard_ringing_keep": float(draw.ringing_keep),
        "hard_sinus_in_mask": int(draw.sinus_in_mask),
        "hard_atrophy": float(subject.cerebellar_atrophy),
        "hard_lesion_dn_mm": hard_cases.lesion_distance_mm(subject),
        "hard_dn_heterogeneity": float(subject.dn_heterogeneity),
        "hard_dn_halo": float(subject.dn_halo[0]),
    }
    assert set(meta) == set(hard_cases.META_KEYS)
    out["hard_meta"] = meta
    out["hard_draw"] = draw


def _write_case(out_dir: Path, site_index: int, subject_index: int, profile: SiteProfile, preset: Preset,
                seed: int, group: str) -> CaseResult:
    start = time.perf_counter()
    sim = simulate_case(site_index, subject_index, profile, preset, seed, group)
    case_id = f"{profile.name}_sub{subject_index + 1:03d}"
    folder = out_dir / profile.name
    affine = sim["affine"]
    scale = 1.0 / ppm_factor(profile.units, f"site {profile.name}")  # ppm -> the site's units (ppb: x 1000)
    image = save_oriented(sim["qsm"] * scale, affine, folder / f"{case_id}_qsm.nii.gz", profile.orientation)
    labels = {"true": save_oriented(sim["dn_true"], affine, folder / f"{case_id}_dn_true.nii.gz",
                                    profile.orientation, is_label=True)}
    for rater, array in sim["raters"].items():
        labels[rater] = save_oriented(array, affine, folder / f"{case_id}_dn_{rater}.nii.gz",
                                      profile.orientation, is_label=True)
    cerebellum = save_oriented(sim["cerebellum"].astype(np.uint8), affine,
                               folder / f"{case_id}_cerebellum.nii.gz",
                               profile.orientation, is_label=True)
    subject = sim["subject"]
    voxel = sim["voxel"]
    meta: dict[str, object] = {
        "group": subject.group,
        "age": round(subject.age, 1),
        "sex": subject.sex,
        "field_strength": profile.field_strength,
        "voxel_size": ",".join(f"{v:g}" for v in voxel),
        "reconstruction": profile.reconstruction,
        "units": profile.units,
        "orientation": profile.orientation,
        "dn_volume_left_mm3": round(sim["dn_volume_left_mm3"], 1),
        "dn_volume_right_mm3": round(sim["dn_volume_right_mm3"], 1),
        "dn_chi_true_ppm": round(sim["dn_chi_true_ppm"], 4),
    }
    for key, value in sim.get("hard_meta", {}).items():  # hard cases: the factors a failure study bins by
        meta[key] = round(float(value), 4) if np.isfinite(value) else "n/a"
    case = Case(case_id, case_id, profile.name, image, labels, cerebellum, meta)
    voxel_mm3 = float(np.prod(voxel))
    tracings = {"true": sim["dn_true"], **sim["raters"]}
    volumes = {r: {side: float((a == side).sum() * voxel_mm3) for side in DN_SIDES}
               for r, a in tracings.items()}
    dn_mean = float(sim["qsm"][sim["dn_true"] > 0].mean())
    return CaseResult(case, time.perf_counter() - start, volumes, dn_mean)


def _mean_sd(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, float)
    return {"mean": round(float(array.mean()), 4), "sd": round(float(array.std(ddof=1)), 4) if len(array) > 1
            else float("nan"), "n": len(array)}


def rater_volume_icc(results: list[CaseResult], rater_a: str, rater_b: str) -> dict[str, float] | None:
    """ICC(2,1) (two-way random, absolute agreement, single rater; pingouin Type 'ICC(A,1)' or 'ICC2' by version)
    of DN volume per side between two tracings, over the cases that have both; None with fewer than 3 targets.
    Computed by :func:`dentate_research.data.icc.icc` (= ``evaluation.stats.icc``, with its pingouin shim)."""
    import pandas as pd

    from ..icc import icc

    rows = [{"target": f"{r.case.case_id}_{side}", "rater": rater, "volume": r.volumes_mm3[rater][side]}
            for r in results if rater_a in r.volumes_mm3 and rater_b in r.volumes_mm3
            for rater in (rater_a, rater_b) for side in DN_SIDES]
    if len(rows) < 6:
        return None
    row = icc(pd.DataFrame(rows), targets="target", raters="rater", ratings="volume", forms=("ICC2",)).iloc[0]
    return {"icc": round(float(row["icc"]), 3), "ci95": [float(row["ci95_low"]), float(row["ci95_high"])],
            "n_targets": int(row["n_targets"])}


def dataset_statistics(results: list[CaseResult]) -> dict[str, object]:
    """Per-group true DN volume per side (mm^3) and DN mean in the reconstructed image (ppm, after site gain
    and offset) as mean/SD, and the rater reliability of DN volume (ICC(A,1), intrarater and interrater)."""
    groups: dict[str, object] = {}
    for group in GROUPS:
        members = [r for r in results if r.case.meta["group"] == group]
        if not members:
            continue
        groups[group] = {
            "dn_volume_true_mm3": _mean_sd([r.volumes_mm3["true"][s] for r in members for s in DN_SIDES]),
            "dn_mean_image_ppm": _mean_sd([r.dn_mean_ppm for r in members]),
            "dn_chi_true_ppm": _mean_sd([float(r.case.meta["dn_chi_true_ppm"]) for r in members]),
        }
    icc = {"intrarater_rater1_vs_retrace": rater_volume_icc(results, "rater1", "rater1_retrace"),
           "interrater_rater1_vs_rater2": rater_volume_icc(results, "rater1", "rater2"),
           "rater1_vs_true": rater_volume_icc(results, "rater1", "true")}
    return {"groups": groups, "rater_volume_icc": icc}


def _resolve(preset: str | Preset, n_subjects_per_site: int | dict[str, int] | None,
             sites: list[str] | None) -> tuple[Preset, list[tuple[int, SiteProfile, int]]]:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; allowed: {list(PRESETS)}")
        preset = PRESETS[preset]
    names = list(SITE_PROFILES)
    chosen = names if sites is None else list(sites)
    unknown = [s for s in chosen if s not in SITE_PROFILES]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown}; allowed: {names}")
    plan = []
    for name in chosen:
        index = names.index(name)
        if n_subjects_per_site is None:
            counts = preset.n_subjects_per_site
            n = counts if isinstance(counts, int) else counts[index]
        elif isinstance(n_subjects_per_site, dict):
            n = int(n_subjects_per_site.get(name, 0))
        else:
            n = int(n_subjects_per_site)
        if n < 0:
            raise ValueError(f"n_subjects_per_site must be >= 0, got {n} for site {name}")
        plan.append((index, SITE_PROFILES[name], n))
    return preset, plan


def generate_dataset(out_dir: Path | str, preset: str | Preset = "tiny", seed: int = 0, n_jobs: int = 1, *,
                     n_subjects_per_site: int | dict[str, int] | None = None, sites: list[str] | None = None,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Generate the phantom data set and return the path of ``out_dir/manifest.tsv``.

    Args:
        out_dir: output folder (must be empty or absent unless ``overwrite``).
        preset: 'tiny' (tests, seconds), 'small' (demo, minutes), 'cpu' (1 mm), 'paper' (328 subjects, ~9 s per
            case, ~1 h per core), 'hard' / 'hard_tiny' (the hard cases of real QSM at 1 mm / 2 mm, module
            ``hard``), 'hard_cut' (``hard`` with every slab cutting the cerebellum near the DN) or a Preset.
        seed: master seed; the same seed gives byte-identical arrays, whatever ``n_jobs``.
        n_jobs: parallel worker processes (joblib).
        n_subjects_per_site: override the preset's subjects per site (int, or {site: n}).
        sites: subset of SITE_PROFILES names.
        overwrite: allow writing into a non-empty folder (existing files are replaced).
        progress: show a tqdm progress bar.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: output folder is not empty; choose another folder or pass "
                              "overwrite=True (CLI: --overwrite)")
    preset_obj, plan = _resolve(preset, n_subjects_per_site, sites)
    jobs = []
    for index, profile, n in plan:
        for j in range(n):
            group = GROUP_CYCLE[(index + j) % len(GROUP_CYCLE)]
            jobs.append((index, j, profile, group))
    if not jobs:
        raise ValueError("nothing to generate: 0 subjects requested")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if n_jobs == 1:
        results = [_write_case(out_dir, i, j, p, preset_obj, seed, g)
                   for i, j, p, g in tqdm(jobs, desc=f"phantom {preset_obj.name}", disable=not progress)]
    else:
        from joblib import Parallel, delayed

        runner = Parallel(n_jobs=n_jobs, return_as="generator")
        results = list(tqdm(runner(delayed(_write_case)(out_dir, i, j, p, preset_obj, seed, g)
                                   for i, j, p, g in jobs),
                            total=len(jobs), desc=f"phantom {preset_obj.name}", disable=not progress))
    total = time.perf_counter() - start
    manifest = write_manifest([r.case for r in results], out_dir / "manifest.tsv")
    summary = {
        "preset": asdict(preset_obj),
        "seed": seed,
        "n_jobs": n_jobs,
        "n_cases": len(results),
        "groups": {g: sum(r.case.meta["group"] == g for r in results) for g in GROUPS},
        "sites": {p.name: {**p.to_dict(), "voxel_size_generated": list(site_voxel_size(p, preset_obj)),
                           "n_cases": n} for _, p, n in plan},
        "timings_s": {"total": round(total, 3),
                      "per_case": {r.case.case_id: round(r.seconds, 3) for r in results},
                      "mean_per_case": round(float(np.mean([r.seconds for r in results])), 3)},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "statistics": dataset_statistics(results),
    }
    write_text_atomic(out_dir / "dataset_summary.json", json.dumps(summary, indent=2, default=str))
    return manifest
