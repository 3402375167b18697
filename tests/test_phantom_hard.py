"""Hard-case phantoms (module ``dentate_research.data.phantom.hard``): every effect present and bounded, seeded,
and the easy presets unchanged bit for bit."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from dentate_research.data.io import load_label
from dentate_research.data.laterality import check_sides, world_centroid
from dentate_research.data.manifest import read_manifest
from dentate_research.data.phantom import PRESETS, SITE_PROFILES, generate_dataset, simulate_case
from dentate_research.data.phantom import hard as hard_cases
from dentate_research.data.phantom.anatomy import render_subject, sample_subject
from dentate_research.data.phantom.generate import GROUP_CYCLE
from dentate_research.data.phantom.hard import HardCaseParams, dn_chi_for_age
from dentate_research.data.phantom.raters import RATER_STYLES, simulate_tracing

SITES = list(SITE_PROFILES)
# sha256 of simulate_case's arrays, computed with the generator before the hard cases existed (git 39d2dd1)
EASY_HASHES = {
    ("tiny", 0, 0): "0ef1a5338f01551fc1e79eab239919a7b798e09d8039b14f30a601daf01863fc",
    ("tiny", 3, 0): "6d74f615252bcd452ddaac9ea2aa4f4b8fbb22256015ab8571e3c2d189f24688",
    ("tiny", 6, 0): "b57d96439327947c21696037faf61f66fce6f0f9b9a82844c9bef1b1aeed4a24",
    ("tiny", 2, 0): "f9089dcc8abb5c355c0da24dd8d05b5532b16c005b0c06684bb4845925b18f62",  # an MS subject
    ("cpu", 0, 0): "8f495f3f873172994f869a843c9e39d7b02fa2ea3630a755104d16d042973d66",  # the trained models' data
}


def _case_hash(sim: dict) -> str:
    h = hashlib.sha256()
    for key in ("qsm", "chi_true", "brain", "dn_true", "cerebellum", "affine"):
        h.update(np.ascontiguousarray(sim[key]).tobytes())
    for name in sorted(sim["raters"]):
        h.update(name.encode())
        h.update(np.ascontiguousarray(sim["raters"][name]).tobytes())
    return h.hexdigest()


def _group(site_index: int, subject_index: int) -> str:
    return GROUP_CYCLE[(site_index + subject_index) % len(GROUP_CYCLE)]


def _hard(site: str = "siteA", subject_index: int = 0, group: str | None = None, seed: int = 0,
          preset: str = "hard_tiny", **overrides):
    site_index = SITES.index(site)
    params = replace(HardCaseParams(), **overrides)
    return simulate_case(site_index, subject_index, SITE_PROFILES[site], replace(PRESETS[preset], hard=params), seed,
                         group or _group(site_index, subject_index))


@pytest.mark.parametrize("key", sorted(EASY_HASHES))
def test_easy_presets_unchanged(key):
    preset, site_index, subject_index = key
    sim = simulate_case(site_index, subject_index, list(SITE_PROFILES.values())[site_index], PRESETS[preset], 0,
                        _group(site_index, subject_index))
    assert _case_hash(sim) == EASY_HASHES[key]
    assert "hard_meta" not in sim
    for name in ("tiny", "small", "cpu", "paper"):
        assert PRESETS[name].hard is None


def test_hard_cases_are_seeded_and_deterministic():
    a, b = _hard("siteB", 0), _hard("siteB", 0)
    assert _case_hash(a) == _case_hash(b)
    assert {k: repr(v) for k, v in a["hard_meta"].items()} == {k: repr(v) for k, v in b["hard_meta"].items()}
    c = _hard("siteB", 0, seed=1)
    assert _case_hash(c) != _case_hash(a)
    assert set(a["hard_meta"]) == set(hard_cases.META_KEYS)
    for key in ("qsm", "chi_true"):
        assert np.isfinite(a[key]).all()


def test_dn_contrast_falls_towards_childhood():
    params = HardCaseParams()
    ages = np.arange(11, 65)
    model = np.array([dn_chi_for_age(a, params) for a in ages])
    assert np.all(np.diff(model) > 0)  # rises with age, steepest early
    assert np.diff(model)[0] > 5 * np.diff(model)[-1]
    assert model[0] == pytest.approx(0.045) and 0.075 < dn_chi_for_age(20, params) < 0.085
    assert 0.125 < dn_chi_for_age(64, params) < 0.135
    # drawn subjects: children far below older adults, spread grows with age
    rng = np.random.default_rng(0)
    chi = {"child": [], "old": []}
    for age, key in [(a, "child") for a in (11, 13, 15, 17)] * 15 + [(a, "old") for a in (50, 55, 60, 64)] * 15:
        subject = sample_subject(rng, "healthy", age=age)
        draw = hard_cases.draw_case(rng, "siteA", "healthy", replace(params, age_override=float(age)))
        hard_cases.apply_to_subject(subject, draw, params, rng)
        chi[key].append(subject.chi["dentate"])
    child, old = np.array(chi["child"]), np.array(chi["old"])
    assert 0.035 < child.mean() < 0.075 and 0.115 < old.mean() < 0.145
    assert old.mean() - child.mean() > 0.05 and old.std() > child.std()
    # in the reconstructed image: the same subject is fainter as a child
    young, adult = _hard("siteA", 0, "healthy", age_override=12.0), _hard("siteA", 0, "healthy", age_override=60.0)
    assert young["hard_meta"]["hard_dn_contrast_ppm"] < 0.7 * adult["hard_meta"]["hard_dn_contrast_ppm"]


def test_heterogeneous_iron_and_gradual_border():
    crisp = _hard("siteA", 1, "healthy", heterogeneity=(0.0, 0.0), halo_fraction=(0.0, 0.0), preset="hard")
    soft = _hard("siteA", 1, "healthy", heterogeneity=(0.35, 0.35), halo_fraction=(0.6, 0.6), halo_mm=(2.0, 2.0),
                 preset="hard")
    assert soft["subject"].dn_heterogeneity == pytest.approx(0.35)

    def stats(sim):
        dn = sim["dn_true"] > 0
        chi = sim["chi_true"]
        inner = ndimage.binary_erosion(dn)
        shell = ndimage.binary_dilation(dn) & ~dn & sim["cerebellum"]
        cv = chi[inner].std() / chi[inner].mean()
        return cv, (np.median(chi[shell]) - sim["subject"].chi["cerebellar_wm"]) / sim["dn_chi_true_ppm"]

    cv_crisp, border_crisp = stats(crisp)
    cv_soft, border_soft = stats(soft)
    assert cv_soft > cv_crisp + 0.05  # heterogeneous iron inside the lamina
    assert border_soft > border_crisp + 0.1  # a halo of iron next to the lamina: the border is gradual
    assert cv_soft < 0.8 and border_soft < 0.9  # bounded: the DN is still a nucleus


def test_vein_touches_the_dn_and_sinus_in_mask():
    for subject_index in range(3):
        touching = _hard("siteC", subject_index, vein_touch_override=1.0, sinus_override=True)
        meta = touching["hard_meta"]
        # on the 2 mm grid a diagonal neighbour is 2 sqrt(2) - 2 = 0.83 mm "apart": adjacent voxels
        assert meta["hard_vein_contact_left_mm"] <= 1.0 and meta["hard_vein_contact_right_mm"] <= 1.0
        assert meta["hard_sinus_in_mask"] == 1
    no_sinus = _hard("siteC", 0, vein_touch_override=1.0, sinus_override=False)
    with_sinus = _hard("siteC", 0, vein_touch_override=1.0, sinus_override=True)
    extra = with_sinus["brain"] & ~no_sinus["brain"]
    assert extra.sum() > 50  # the sinus enters the mask, outside the brain
    assert np.median(with_sinus["chi_true"][extra]) > 0.2  # as venous blood


def test_air_bone_artefacts_and_residual_background_are_bounded():
    clean = _hard("siteH", 0, background_residual_override=0.0, background=False, motion_override=0.0)
    dirty = _hard("siteH", 0, background_residual_override=0.12, motion_override=0.0)
    meta = dirty["hard_meta"]
    assert 0.003 < meta["hard_residual_field_ppm"] < 0.06
    assert 0.0 <= meta["hard_dropout_fraction"] < 0.1
    assert clean["hard_meta"]["hard_residual_field_ppm"] == 0.0
    both = clean["brain"] & dirty["brain"]
    error = np.abs(dirty["qsm"] - clean["qsm"])[both]
    assert 0.002 < np.mean(error) < 0.05  # visible but not swamping the DN (~0.05-0.15 ppm)
    assert dirty["brain"].sum() < clean["brain"].sum()  # dephased voxels leave the mask
    # the artefact is strongest laterally-inferiorly (mastoid, petrous bone), not uniform
    x = np.arange(both.shape[0])[:, None, None] * np.ones(both.shape)
    lateral = both & (np.abs(x - both.shape[0] / 2) > 0.3 * both.shape[0])
    medial = both & (np.abs(x - both.shape[0] / 2) < 0.1 * both.shape[0])
    full_error = np.abs(dirty["qsm"] - clean["qsm"])
    assert full_error[lateral].mean() > full_error[medial].mean()


def test_partial_coverage_cuts_the_cerebellum_and_the_dn():
    full = _hard("siteB", 1, partial_coverage_override=0.0)
    cut = _hard("siteB", 1, partial_coverage_override=1.0, coverage_cut_mm=(-1.0, -1.0))
    meta = cut["hard_meta"]
    assert meta["hard_partial_coverage"] == 1 and full["hard_meta"]["hard_partial_coverage"] == 0
    assert cut["qsm"].shape[2] < full["qsm"].shape[2]
    assert cut["affine"][2, 3] > full["affine"][2, 3]  # the slab starts higher
    assert cut["cerebellum"][:, :, 0].any()  # the slab's inferior edge cuts through the cerebellum
    assert meta["hard_cerebellum_coverage"] < 0.7
    assert 0.2 < meta["hard_dn_coverage"] < 0.9  # ... and through the DN: only the covered part is truth
    assert cut["dn_true"][:, :, 0].any()
    dz = full["qsm"].shape[2] - cut["qsm"].shape[2]
    for side in (1, 2):
        assert (cut["dn_true"] == side).sum() <= (full["dn_true"] == side).sum()
        assert (cut["raters"]["rater1"] == side).any()
    assert cut["qsm"].shape == cut["dn_true"].shape == full["dn_true"][:, :, dz:].shape


@pytest.mark.parametrize("tilt", [(25, 0, 0), (-25, 0, 0), (0, 25, 0), (0, -25, 0), (0, 0, 25), (0, 0, -25),
                                  (20, 15, -15)])
def test_dn_labels_stay_on_their_world_side_under_tilt(tilt):
    sim = _hard("siteA", 0, "healthy", tilt_override_deg=tilt)
    assert sim["hard_meta"]["hard_head_tilt_deg"] == pytest.approx(
        hard_cases.tilt_angle_deg(sim["subject"]), abs=1e-6)
    assert sim["hard_meta"]["hard_head_tilt_deg"] > 14.0
    subject = sim["subject"]
    for labels in (sim["dn_true"], sim["raters"]["rater1"], sim["raters"]["rater2"]):
        sides = check_sides(labels, sim["affine"])
        assert sides["sides_consistent"] is True  # 1 = left lies at smaller world x than 2 = right
        for side, dn in zip((1, 2), subject.dentates, strict=True):  # and each label is that anatomical DN
            centroid = world_centroid(labels == side, sim["affine"])
            own = subject.mni_to_world(np.asarray(dn.centre))
            other = subject.mni_to_world(np.asarray(subject.dentates[2 - side].centre))
            assert np.linalg.norm(centroid - own) < 6.0 < np.linalg.norm(centroid - other)


def test_tilted_case_on_disk_keeps_sides_in_a_flipped_voxel_order(tmp_path):
    preset = replace(PRESETS["hard_tiny"], hard=replace(HardCaseParams(), tilt_override_deg=(10.0, 0.0, 25.0)))
    manifest = generate_dataset(tmp_path / "d", preset, seed=0, sites=["siteD", "siteG"], n_subjects_per_site=1,
                                progress=False)
    cases = read_manifest(manifest)
    for case in cases:
        assert case.meta["orientation"] in ("LAS", "LPS")
        for rater in ("true", "rater1"):
            label = load_label(case.labels[rater])
            assert check_sides(label.array, label.affine)["sides_consistent"] is True
        for key in hard_cases.META_KEYS:
            assert key in case.meta


def test_head_size_tilt_motion_and_coverage_distributions():
    params = HardCaseParams()
    rng = np.random.default_rng(3)
    draws = [(site, group, hard_cases.draw_case(rng, site, group, params))
             for site in SITES for group in ("healthy", "FRDA", "MS") for _ in range(40)]
    ages = np.array([d.age for *_, d in draws])
    assert ages.min() >= 11 and ages.max() <= 64 and (ages < 18).mean() > 0.12
    tilts = np.array([np.max(np.abs(d.rotation_deg)) for *_, d in draws])
    assert tilts.max() <= 25.0 and (tilts >= 15).mean() > 0.08
    young = [d.head_factor for *_, d in draws if d.age < 12]
    adult = [d.head_factor for *_, d in draws if d.age > 25]
    assert 0.92 < np.mean(young) < 0.97 and 0.98 < np.mean(adult) < 1.02
    partial = {s: np.mean([d.partial_coverage for site, _, d in draws if site == s]) for s in SITES}
    assert partial["siteC"] > partial["siteA"] + 0.2  # thin 7 T slabs cut the cerebellum more often
    motion = {s: np.mean([bool(d.motion_events) for site, _, d in draws if site == s]) for s in SITES}
    assert motion["siteD"] > motion["siteE"] and 0.05 < np.mean(list(motion.values())) < 0.5
    steps = [d.motion_mm() for *_, d in draws if d.motion_events]
    assert 0.2 < np.median(steps) < 3.0
    site_d = [d.age for site, _, d in draws if site == "siteD"]
    assert max(site_d) <= 22.0  # the young cohort


def test_motion_and_ringing_corrupt_k_space():
    image = np.zeros((32, 32, 32), np.float32)
    image[10:22, 10:22, 10:22] = 1.0
    base = hard_cases.HardDraw(30.0, 1.0, (0.0, 0.0, 0.0), False, 0.0, 0.0, [0.0] * 9, (1.0, 1.0), [], 1.0,
                               False, (False, False), 20.0)
    assert hard_cases.kspace_corrupt(image, (1.0, 1.0, 1.0), base) is image
    moved = hard_cases.kspace_corrupt(image, (1.0, 1.0, 1.0), replace(base, motion_events=[(0.5, (0.0, 2.0, 0.0))]))
    ghost = np.abs(moved[:, :, :8]).mean()  # energy outside the object along the phase-encode axes
    assert ghost > 1e-3 and np.abs(moved - image).max() > 0.1
    ringing = hard_cases.kspace_corrupt(image, (1.0, 1.0, 1.0), replace(base, ringing_keep=0.6))
    profile = ringing[16, :, 16]
    assert profile[10:22].max() > 1.02 or profile[:10].min() < -0.02  # Gibbs over/undershoot at the edge
    sim = _hard("siteD", 0, motion_override=1.0)
    assert sim["hard_meta"]["hard_motion_mm"] > 0


def test_frda_atrophy_and_ms_lesions_near_the_dn():
    params = HardCaseParams()
    rng = np.random.default_rng(5)
    atrophy, volumes, durations = [], [], []
    for _ in range(40):
        subject = sample_subject(rng, "FRDA", age=45.0)
        draw = hard_cases.draw_case(rng, "siteA", "FRDA", replace(params, age_override=45.0))
        hard_cases.apply_to_subject(subject, draw, params, rng)
        atrophy.append(subject.cerebellar_atrophy)
        volumes.append(np.mean([d.target_volume_mm3 for d in subject.dentates]))
        durations.append(draw.extra["frda_duration_years"])
        assert subject.fourth_ventricle_gain == params.fourth_ventricle_gain
    atrophy, volumes = np.array(atrophy), np.array(volumes)
    assert atrophy.min() >= 0.0 and atrophy.max() <= 0.14 and atrophy.mean() > 0.05
    assert np.corrcoef(durations, atrophy)[0, 1] > 0.5  # atrophy grows with disease duration
    assert volumes.mean() < 720  # smaller DN than the easy FRDA draw (mean ~730) and healthy (~950)
    # rendered: smaller cerebellum and a larger 4th ventricle than the same subject without atrophy
    subject = sample_subject(np.random.default_rng(9), "FRDA", age=50.0)
    subject.cerebellar_atrophy, subject.fourth_ventricle_gain = 0.1, 4.0
    origin, spacing, shape = np.array([-79.0, -117.0, -77.0]), np.array([2.0, 2.0, 2.0]), (80, 101, 84)
    atrophic = render_subject(subject, origin, spacing, shape)
    subject.cerebellar_atrophy = 0.0
    normal = render_subject(subject, origin, spacing, shape)
    assert atrophic.cerebellum.sum() < 0.85 * normal.cerebellum.sum()
    posterior_fossa = np.zeros(shape, bool)
    posterior_fossa[25:55, 20:50, 5:35] = True
    csf = lambda r: ((r.chi == subject.chi["csf"]) & r.brain & posterior_fossa).sum()  # noqa: E731
    assert csf(atrophic) > csf(normal)
    # MS: lesions placed next to the DN (some with a paramagnetic rim)
    near = [_hard("siteA", j, "MS", seed=2, ms_near_dn_probability=1.0)["hard_meta"]["hard_lesion_dn_mm"]
            for j in range(3)]
    assert all(0.0 <= d <= 5.0 for d in near)
    ms = _hard("siteA", 0, "MS", seed=2, ms_near_dn_probability=1.0, ms_rim_probability=1.0)
    subject = ms["subject"]
    rims = [(c, r, subject.chi["white_matter"] + rim) for c, r, _, rim, _ in subject.rim_lesions]
    assert rims and any(np.isclose(ms["chi_true"], value, atol=0.004).sum() > 0 for *_, value in rims)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_rater_disagreement_grows_where_contrast_is_low():
    shape = (40, 40, 30)
    grid = np.indices(shape).astype(np.float32)
    r = np.sqrt(((grid[0] - 14) / 7) ** 2 + ((grid[1] - 20) / 6) ** 2 + ((grid[2] - 15) / 6) ** 2)
    pv_left = np.clip((1.0 - r) * 3.0, 0, 1).astype(np.float32) * (r > 0.45)
    pv_right = np.zeros(shape, np.float32)
    styles = {n: replace(s, low_contrast_gain=1.5) for n, s in RATER_STYLES.items()}
    disagreement = {}
    for contrast in (0.03, 0.15):
        values = []
        for seed in range(6):
            noise = np.random.default_rng(seed).normal(0, 0.01, shape).astype(np.float32)
            image = ndimage.gaussian_filter(pv_left, 0.7) * contrast + noise
            tracings = {n: simulate_tracing(pv_left, pv_right, image, (1.0, 1.0, 1.0), style,
                                            np.random.default_rng([seed, i]), np.random.default_rng([seed, 50 + i]))
                        for i, (n, style) in enumerate(styles.items()) if n != "rater1_retrace"}
            values.append(1 - _dice(tracings["rater1"] > 0, tracings["rater2"] > 0))
        disagreement[contrast] = float(np.mean(values))
    assert disagreement[0.03] > disagreement[0.15] + 0.03
    assert disagreement[0.03] < 0.6  # bounded: still tracing the same nucleus


def test_hard_cut_preset_cuts_the_nuclei_and_changes_nothing_else():
    """``hard_cut`` (training data for partial coverage): the hard cases with every slab's inferior edge within
    -8..+3 mm of the DN centre, so each scan loses part of the cerebellum and of a DN (2 mm grid for speed)."""
    cut = PRESETS["hard_cut"].hard
    assert replace(cut, partial_coverage_override=None, coverage_cut_mm=HardCaseParams().coverage_cut_mm) == \
        HardCaseParams()
    preset = replace(PRESETS["hard_tiny"], hard=cut)
    for site in ("siteA", "siteB"):
        site_index = SITES.index(site)
        meta = simulate_case(site_index, 0, SITE_PROFILES[site], preset, 5, _group(site_index, 0))["hard_meta"]
        assert meta["hard_partial_coverage"] == 1
        assert meta["hard_cerebellum_coverage"] < 0.8 and 0.05 < meta["hard_dn_coverage"] < 1.0, meta
