"""Figures of the hard-case phantom effects: one PNG per effect (the effect off vs on for the same subject) and a
combined figure for the README.

Run: ``python -m dentate_research.data.phantom.hard_figures --out docs/img`` (about 20 cases of the ``hard`` preset
at 1 mm: ~3 minutes on 2 cores). Panels are in neurological view (subject's left on the left), grey window in ppm.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import write_figure_atomic  # noqa: E402
from ..io import Volume  # noqa: E402
from ..labels import DN_SIDES, SIDE_NAMES  # noqa: E402
from .generate import GROUP_CYCLE, PRESETS, simulate_case  # noqa: E402
from .hard import HardCaseParams, dn_chi_for_age  # noqa: E402
from .sites import SITE_PROFILES  # noqa: E402
from .viz import _draw  # noqa: E402

WINDOW = (-0.08, 0.16)
SITES = list(SITE_PROFILES)


def simulate(site: str, subject_index: int = 0, group: str | None = None, seed: int = 0, preset: str = "hard",
             **overrides) -> dict:
    """One hard case with some effects forced (``HardCaseParams`` fields)."""
    index = SITES.index(site)
    params = replace(HardCaseParams(), **overrides)
    return simulate_case(index, subject_index, SITE_PROFILES[site], replace(PRESETS[preset], hard=params), seed,
                         group or GROUP_CYCLE[(index + subject_index) % len(GROUP_CYCLE)])


def _volume(sim: dict) -> Volume:
    return Volume(sim["qsm"], sim["affine"])


def _centre(sim: dict, side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    mask = sim["dn_true"] > 0 if side is None else sim["dn_true"] == side
    vox = np.argwhere(mask).mean(axis=0)
    return vox, sim["affine"][:3, :3] @ vox + sim["affine"][:3, 3]


def panel(ax, sim: dict, view: str = "axial", side: int | None = None, zoom: float | None = 30.0,
          labels: tuple[str, ...] = ("true",), image: np.ndarray | None = None, title: str = "",
          window: tuple[float, float] = WINDOW, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
          centre_mm: np.ndarray | None = None) -> None:
    """One slice through the DN (``side``: the left/right DN, None: both; or through ``centre_mm``) with label
    contours."""
    vol = _volume(sim)
    vox, mm = _centre(sim, side)
    if centre_mm is not None:
        mm = np.asarray(centre_mm, float)
        vox = np.linalg.solve(sim["affine"][:3, :3], mm - sim["affine"][:3, 3])
    vox = vox + np.asarray(shift_mm) / np.asarray(vol.spacing)
    mm = mm + np.asarray(shift_mm)
    vox = np.clip(vox, 0, np.asarray(vol.shape) - 1)
    side_values = {SIDE_NAMES[value]: value for value in DN_SIDES}  # 'left' -> 1, 'right' -> 2
    contours = {}
    for name in labels:
        if name == "true":
            contours["true"] = sim["dn_true"]
        elif name == "cerebellum":
            contours["cerebellum"] = sim["cerebellum"].astype(np.uint8)
        elif name in side_values:
            contours[name] = (sim["dn_true"] == side_values[name]).astype(np.uint8)
        else:
            contours[name] = sim["raters"][name]
    _draw(ax, vol, sim["qsm"] if image is None else image, contours, view, vox, zoom, mm, window)
    if title:
        ax.set_title(title, fontsize=8)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_figure_atomic(fig, path, dpi=90)
    plt.close(fig)
    return path


def _meta(sim: dict, key: str) -> float:
    return float(sim["hard_meta"][f"hard_{key}"])


def fig_contrast_age(out: Path, cache: dict) -> Path:
    params = HardCaseParams()
    ages = (12.0, 25.0, 60.0)
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.2))
    ax = axes[0, 0]
    grid = np.linspace(11, 64, 100)
    ax.plot(grid, [dn_chi_for_age(a, params) for a in grid], "k-", label="model (healthy)")
    for age in ages:
        sim = cache[("age", age)]
        ax.plot(age, sim["dn_chi_true_ppm"], "o", label=f"drawn, age {age:.0f}")
    ax.set_xlabel("age (years)", fontsize=8)
    ax.set_ylabel("DN chi (ppm)", fontsize=8)
    ax.legend(fontsize=6)
    ax.set_title("DN susceptibility vs age", fontsize=8)
    axes[1, 0].axis("off")
    for col, age in enumerate(ages, start=1):
        sim = cache[("age", age)]
        panel(axes[0, col], sim, "axial", None, 32, ("true",),
              title=f"age {age:.0f}: contrast {_meta(sim, 'dn_contrast_ppm'):.3f} ppm")
        panel(axes[1, col], sim, "axial", 1, 15, ("true", "rater1", "rater2"), title="left DN, red truth, "
              "yellow/cyan raters")
    fig.suptitle("Low-iron DN: the same subject (siteA) at 12, 25 and 60 years; raters disagree more when faint",
                 fontsize=9)
    return _save(fig, out / "hard_contrast_age.png")


def fig_iron_border(out: Path, cache: dict) -> Path:
    crisp, soft = cache["crisp"], cache["soft"]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
    for row, (sim, name) in enumerate(((crisp, "homogeneous, crisp border"), (soft, "heterogeneous, gradual"))):
        panel(axes[row, 0], sim, "axial", 1, 14, (), image=sim["chi_true"], title=f"true chi: {name}")
        panel(axes[row, 1], sim, "axial", 1, 14, ("true",), title="QSM with truth contour")
        vox, _ = _centre(sim, 1)
        y, z = int(round(vox[1])), int(round(vox[2]))
        x0 = int(round(vox[0]))
        xs = np.arange(x0 - 14, x0 + 15)
        axes[row, 2].plot(xs - x0, sim["chi_true"][xs, y, z], "k-", label="true chi")
        axes[row, 2].plot(xs - x0, sim["qsm"][xs, y, z], "b-", label="QSM")
        axes[row, 2].fill_between(xs - x0, -0.05, 0.2, where=sim["dn_true"][xs, y, z] > 0, color="r", alpha=0.15,
                                  label="truth")
        axes[row, 2].set_ylim(-0.05, 0.2)
        axes[row, 2].set_title("left-right profile through the left DN (mm)", fontsize=8)
        axes[row, 2].legend(fontsize=6)
    fig.suptitle("Heterogeneous iron inside the DN and a gradual border (same subject, effect off / at the top of its "
                 "ranges: h 0.35, halo 0.6 over 1.8 mm)",
                 fontsize=9)
    return _save(fig, out / "hard_iron_border.png")


def fig_veins(out: Path, cache: dict) -> Path:
    off, on = cache["veins_off"], cache["veins_on"]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.4))
    for row, (sim, name) in enumerate(((off, "no added vein (own veins only), no sinus"),
                                       (on, "veins touching both DNs, sinus in the mask"))):
        points = sim["hard_contact_points_mm"]
        panel(axes[row, 0], sim, "axial", None, None, ("true",), title=f"{name}")
        panel(axes[row, 1], sim, "axial", 1, 16, ("true",), centre_mm=points[1],
              title=f"left DN at its closest vein: {_meta(sim, 'vein_contact_left_mm'):.1f} mm")
        panel(axes[row, 2], sim, "coronal", 2, 16, ("true",), centre_mm=points[2],
              title=f"right DN, coronal: {_meta(sim, 'vein_contact_right_mm'):.1f} mm")
        panel(axes[row, 3], sim, "sagittal", 1, 60, ("true",), shift_mm=(-32.0, 0.0, 0.0),
              title="sagittal 32 mm lateral of the left DN (sinus)")
    fig.suptitle("Veins and the transverse-sigmoid sinus next to the DN (siteC, same subject; panels 2-3 centred "
                 "where the DN comes closest to a vein)", fontsize=9)
    return _save(fig, out / "hard_veins.png")


def fig_artefacts(out: Path, cache: dict) -> Path:
    clean, dirty = cache["art_off"], cache["art_on"]
    diff = np.where(clean["brain"] & dirty["brain"], dirty["qsm"] - clean["qsm"], 0.0)
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7))
    panel(axes[0, 0], clean, "axial", None, None, ("true",), title="no residual background field")
    panel(axes[0, 1], dirty, "axial", None, None, ("true",),
          title=f"residual {_meta(dirty, 'residual_field_ppm'):.3f} ppm RMS (cerebellum)")
    panel(axes[0, 2], dirty, "axial", None, None, (), image=diff, window=(-0.05, 0.05), title="difference (+/-0.05)")
    panel(axes[1, 0], clean, "coronal", 1, None, ("true",), title="coronal through the left DN")
    panel(axes[1, 1], dirty, "coronal", 1, None, ("true",),
          title=f"dropout: {_meta(dirty, 'dropout_fraction'):.1%} of cerebellum masked")
    panel(axes[1, 2], dirty, "coronal", 1, None, (), image=diff, window=(-0.05, 0.05), title="difference")
    fig.suptitle("Air-tissue and bone artefacts (mastoid air cells, petrous bone) and residual background field "
                 "(siteH, same subject)", fontsize=9)
    return _save(fig, out / "hard_artefacts.png")


def fig_coverage(out: Path, cache: dict) -> Path:
    full, cut = cache["cov_off"], cache["cov_on"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.8))
    panel(axes[0], full, "sagittal", 1, 60, ("true",), title="full coverage")
    panel(axes[1], cut, "sagittal", 1, 60, ("true",),
          title=f"slab cut: cerebellum {_meta(cut, 'cerebellum_coverage'):.0%}, DN {_meta(cut, 'dn_coverage'):.0%}")
    panel(axes[2], full, "coronal", None, 50, ("true",), title="full, coronal")
    panel(axes[3], cut, "coronal", None, 50, ("true",), title="slab cut, coronal (truth = covered part)")
    for ax in axes[[0, 1]]:
        ax.set_ylim(None, None)
    fig.suptitle("Partial coverage: the slab's inferior edge cuts the cerebellum and the DN (siteC)", fontsize=9)
    return _save(fig, out / "hard_coverage.png")


def fig_pose(out: Path, cache: dict) -> Path:
    sims = [cache["pose_0"], cache["pose_pitch"], cache["pose_yaw"]]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for col, sim in enumerate(sims):
        tilt = _meta(sim, "head_tilt_deg")
        scale = _meta(sim, "head_scale")
        panel(axes[0, col], sim, "sagittal", 1, None, ("left", "right"),
              title=f"age {sim['subject'].age:.0f}, head scale {scale:.2f}, tilt {tilt:.0f} deg")
        panel(axes[1, col], sim, "axial", None, 45, ("left", "right"), title="axial: label 1 (left) red, 2 cyan")
    fig.suptitle("Head size (11-year-old vs adult) and head tilt up to 25 degrees; labels stay 1 = left, 2 = right",
                 fontsize=9)
    return _save(fig, out / "hard_pose.png")


def fig_motion(out: Path, cache: dict) -> Path:
    sims = [(cache["mot_off"], "no motion"), (cache["mot_on"], "motion"), (cache["ring_off"], "siteF, no ringing"),
            (cache["ring_on"], "ringing")]
    fig, axes = plt.subplots(2, 4, figsize=(14, 7))
    for col, (sim, name) in enumerate(sims):
        extra = (f"{_meta(sim, 'motion_mm'):.1f} mm" if name == "motion" else
                 f"keep {_meta(sim, 'ringing_keep'):.0%} of k-space" if name == "ringing" else "")
        panel(axes[0, col], sim, "axial", None, None, ("true",), title=f"{name} {extra}")
        panel(axes[1, col], sim, "axial", 1, 16, ("true",), title="left DN")
    fig.suptitle("Motion (step translations between k-space segments, siteA, same subject) and truncation ringing "
                 "(siteF, 7 T TKD t = 0.1: its streaking is the site's own)",
                 fontsize=9)
    return _save(fig, out / "hard_motion_ringing.png")


def _nearest_lesion_mm(sim: dict) -> np.ndarray:
    """World position of the MS lesion closest to a DN."""
    subject = sim["subject"]
    dns = [subject.mni_to_world(np.asarray(d.centre)) for d in subject.dentates]
    lesions = [subject.mni_to_world(np.asarray(c)) for c, *_ in (subject.rim_lesions or subject.lesions)]
    return min(lesions, key=lambda p: min(np.linalg.norm(p - d) for d in dns))


def _tissue(sim: dict) -> np.ndarray:
    """True chi with CSF shown black (QSM barely separates CSF from tissue)."""
    csf = sim["brain"] & (np.abs(sim["chi_true"] - sim["subject"].chi["csf"]) < 1e-3)
    return np.where(csf, -0.08, sim["chi_true"]).astype(np.float32)


def fig_disease(out: Path, cache: dict) -> Path:
    healthy, frda, ms = cache["healthy"], cache["frda"], cache["ms"]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.2))
    for col, (sim, name) in enumerate(((healthy, "healthy"), (frda, "FRDA"))):
        dn_volume = (sim["dn_volume_left_mm3"] + sim["dn_volume_right_mm3"]) / 2
        panel(axes[0, col], sim, "sagittal", None, 45, ("cerebellum",), image=_tissue(sim),
              window=(-0.08, 0.08), title=f"{name}: midline, true chi, CSF black, cerebellum mask magenta")
        panel(axes[1, col], sim, "axial", None, 35, ("true",),
              title=f"QSM: atrophy {_meta(sim, 'atrophy'):.2f}, DN {dn_volume:.0f} mm3 per side")
    lesion = _nearest_lesion_mm(ms)
    panel(axes[0, 2], ms, "axial", None, 22, ("true",), centre_mm=lesion,
          title=f"MS, QSM at a rim lesion next to the DN (gap {_meta(ms, 'lesion_dn_mm'):.1f} mm)")
    panel(axes[1, 2], ms, "axial", None, 22, ("true",), centre_mm=lesion, image=ms["chi_true"],
          window=(-0.04, 0.08), title="MS, true chi, window -0.04..0.08 (lesion: bright rim)")
    fig.suptitle("FRDA atrophy (smaller cerebellum and DN, larger 4th ventricle; same subject drawn healthy / FRDA "
                 "at 45 y) and MS lesions next to the DN (siteB)", fontsize=9)
    return _save(fig, out / "hard_disease.png")


def fig_combined(out: Path, cache: dict) -> Path:
    fig, axes = plt.subplots(2, 4, figsize=(14, 7.2))
    panel(axes[0, 0], cache[("age", 12.0)], "axial", 1, 16, ("true", "rater1", "rater2"),
          title="low-iron DN (12 y), raters disagree")
    panel(axes[0, 1], cache["soft"], "axial", 1, 14, (), image=cache["soft"]["chi_true"],
          title="heterogeneous iron, gradual border")
    panel(axes[0, 2], cache["veins_on"], "axial", 1, 16, ("true",), title="vein touching the DN",
          centre_mm=cache["veins_on"]["hard_contact_points_mm"][1])
    panel(axes[0, 3], cache["art_on"], "coronal", 1, None, ("true",), title="air/bone artefacts, residual field")
    panel(axes[1, 0], cache["cov_on"], "sagittal", 1, 60, ("true",), title="slab cuts the cerebellum and DN")
    panel(axes[1, 1], cache["pose_pitch"], "sagittal", 1, None, ("left", "right"), title="25 degree head tilt")
    panel(axes[1, 2], cache["mot_on"], "axial", None, None, ("true",), title="motion")
    panel(axes[1, 3], cache["ms"], "axial", None, 22, ("true",), centre_mm=_nearest_lesion_mm(cache["ms"]),
          image=cache["ms"]["chi_true"], window=(-0.04, 0.08), title="MS lesion next to the DN (true chi)")
    fig.suptitle("Hard-case phantoms (preset 'hard', 1 mm): red = true DN, yellow/cyan = raters; window -0.08..0.16 "
                 "ppm, neurological view", fontsize=10)
    return _save(fig, out / "hard_cases.png")


def build_cache(seed: int = 0, preset: str = "hard") -> dict:
    """The simulated cases behind the figures (each effect off and on for the same subject)."""
    from functools import partial

    sim = partial(simulate, preset=preset)
    cache: dict = {}
    for age in (12.0, 25.0, 60.0):
        cache[("age", age)] = sim("siteA", 2, "healthy", seed, age_override=age, motion_override=0.0,
                                       partial_coverage_override=0.0, tilt_override_deg=(0.0, 0.0, 0.0))
    cache["crisp"] = sim("siteC", 1, "healthy", seed, heterogeneity=(0.0, 0.0), halo_fraction=(0.0, 0.0),
                              partial_coverage_override=0.0, motion_override=0.0, age_override=45.0)
    cache["soft"] = sim("siteC", 1, "healthy", seed, heterogeneity=(0.35, 0.35), halo_fraction=(0.6, 0.6),
                             halo_mm=(1.8, 1.8), partial_coverage_override=0.0, motion_override=0.0, age_override=45.0)
    common = {"partial_coverage_override": 0.0, "motion_override": 0.0, "tilt_override_deg": (0.0, 0.0, 0.0)}
    cache["veins_off"] = sim("siteC", 2, "healthy", seed, vein_touch_override=0.0, sinus_override=False, **common)
    cache["veins_on"] = sim("siteC", 2, "healthy", seed, vein_touch_override=1.0, sinus_override=True, **common)
    cache["art_off"] = sim("siteH", 0, "healthy", seed, background=False, background_residual_override=0.0,
                                **common)
    cache["art_on"] = sim("siteH", 0, "healthy", seed, background_residual_override=0.12, **common)
    cache["cov_off"] = sim("siteC", 0, "healthy", seed, partial_coverage_override=0.0, motion_override=0.0)
    cache["cov_on"] = sim("siteC", 0, "healthy", seed, partial_coverage_override=1.0, coverage_cut_mm=(-2.0, -2.0),
                               motion_override=0.0)
    cache["pose_0"] = sim("siteA", 1, "healthy", seed, age_override=11.0, tilt_override_deg=(0.0, 0.0, 0.0),
                               motion_override=0.0, partial_coverage_override=0.0)
    cache["pose_pitch"] = sim("siteA", 1, "healthy", seed, age_override=40.0, tilt_override_deg=(25.0, 0.0, 0.0),
                                   motion_override=0.0, partial_coverage_override=0.0)
    cache["pose_yaw"] = sim("siteA", 1, "healthy", seed, age_override=40.0, tilt_override_deg=(-10.0, 8.0, 20.0),
                                 motion_override=0.0, partial_coverage_override=0.0)
    # siteF truncates k-space (ringing) in every scan; without it for comparison
    cache["ring_on"] = sim("siteF", 0, "healthy", seed, motion_override=0.0, partial_coverage_override=0.0)
    cache["ring_off"] = sim("siteF", 0, "healthy", seed, motion_override=0.0, partial_coverage_override=0.0,
                            ringing_override=1.0)
    cache["mot_off"] = sim("siteA", 3, "healthy", seed, motion_override=0.0, partial_coverage_override=0.0)
    cache["mot_on"] = sim("siteA", 3, "healthy", seed, motion_override=1.0, motion_sd_mm=1.2,
                               partial_coverage_override=0.0)
    cache["healthy"] = sim("siteB", 0, "healthy", seed, age_override=45.0, partial_coverage_override=0.0,
                                motion_override=0.0, tilt_override_deg=(0.0, 0.0, 0.0))
    cache["frda"] = sim("siteB", 0, "FRDA", seed, age_override=45.0, partial_coverage_override=0.0,
                             motion_override=0.0, tilt_override_deg=(0.0, 0.0, 0.0))
    cache["ms"] = sim("siteB", 0, "MS", seed, age_override=45.0, partial_coverage_override=0.0,
                      motion_override=0.0, tilt_override_deg=(0.0, 0.0, 0.0), ms_near_dn_probability=1.0,
                      ms_rim_probability=1.0)
    return cache


def make_figures(out: Path | str, seed: int = 0, preset: str = "hard") -> list[Path]:
    """Write every per-effect PNG and the combined figure into ``out``."""
    out = Path(out)
    cache = build_cache(seed, preset)
    return [fig_contrast_age(out, cache), fig_iron_border(out, cache), fig_veins(out, cache),
            fig_artefacts(out, cache), fig_coverage(out, cache), fig_pose(out, cache), fig_motion(out, cache),
            fig_disease(out, cache), fig_combined(out, cache)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="hard", help="hard (1 mm, the figures) or hard_tiny (2 mm, a quick look)")
    args = parser.parse_args(argv)
    for path in make_figures(args.out, args.seed, args.preset):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
