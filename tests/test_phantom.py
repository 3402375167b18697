"""The synthetic multi-site QSM phantom: anatomy, physics, sites, raters, files, manifest and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dentate_research.cli.main import main as cli_main
from dentate_research.data.io import load_image, load_label
from dentate_research.data.laterality import check_sides
from dentate_research.data.manifest import read_manifest, write_manifest
from dentate_research.data.phantom import (
    PRESETS,
    SITE_PROFILES,
    generate_dataset,
    simulate_case,
    site_voxel_size,
)
from dentate_research.data.phantom.anatomy import sample_subject
from dentate_research.data.phantom.generate import volume_preserving_mask
from dentate_research.data.phantom.physics import b0_direction, forward_field, reconstruct


def _ppm(case, array):
    return array / 1000.0 if case.meta["units"] == "ppb" else array


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def cases(tiny_dataset):
    return read_manifest(tiny_dataset)


def test_layout_manifest_and_summary(tiny_dataset, cases, tmp_path):
    root = Path(tiny_dataset).parent
    assert len(cases) == sum(PRESETS["tiny"].n_subjects_per_site)
    assert {c.site for c in cases} == set(SITE_PROFILES)
    for c in cases:
        assert c.image.exists() and c.image.parent == root / c.site
        assert c.image.name == f"{c.case_id}_qsm.nii.gz"
        assert {"true", "rater1", "rater2"} <= set(c.labels)
        assert c.cerebellum is not None and c.cerebellum.exists()
        for key in ("group", "age", "sex", "field_strength", "voxel_size", "reconstruction", "units",
                    "dn_volume_left_mm3", "dn_volume_right_mm3"):
            assert c.meta[key] != ""
    assert sum("rater1_retrace" in c.labels for c in cases) >= 3
    assert {c.meta["group"] for c in cases} == {"healthy", "FRDA", "MS"}
    summary = json.loads((root / "dataset_summary.json").read_text())
    assert summary["preset"]["name"] == "tiny" and summary["seed"] == 0
    assert set(summary["sites"]) == set(SITE_PROFILES) and summary["timings_s"]["total"] > 0
    stats = summary["statistics"]
    assert set(stats["groups"]) == {"healthy", "FRDA", "MS"}
    assert -1 <= stats["rater_volume_icc"]["interrater_rater1_vs_rater2"]["icc"] <= 1
    # Manifest round trip.
    copy = write_manifest(cases, root / "manifest_copy.tsv")
    again = read_manifest(copy)
    copy.unlink()
    assert [(c.case_id, c.image, c.labels, c.cerebellum, c.meta) for c in again] == \
        [(c.case_id, c.image, c.labels, c.cerebellum, c.meta) for c in cases]


def test_group_volume_distributions():
    """Target DN volumes per side: healthy ~700-1200 mm^3, FRDA smaller (484-1098, mean ~730)."""
    rng = np.random.default_rng(0)
    volumes = {g: [d.target_volume_mm3 for _ in range(60) for d in sample_subject(rng, g).dentates]
               for g in ("healthy", "FRDA")}
    healthy, frda = np.array(volumes["healthy"]), np.array(volumes["FRDA"])
    assert 880 < healthy.mean() < 1020 and healthy.min() >= 600 and healthy.max() <= 1260
    assert 680 < frda.mean() < 790 and frda.min() >= 470 and frda.max() <= 1100
    old, young = sample_subject(np.random.default_rng(1), "healthy", age=64), \
        sample_subject(np.random.default_rng(1), "healthy", age=14)
    assert old.chi["dentate"] > young.chi["dentate"] + 0.03  # DN susceptibility rises with age


def test_true_dn_volumes_in_files(cases):
    by_group: dict[str, list[float]] = {}
    for c in cases:
        image = load_image(c.image)
        label = load_label(c.label("true"), image)
        voxel_mm3 = float(np.prod(image.spacing))
        for side, key in ((1, "dn_volume_left_mm3"), (2, "dn_volume_right_mm3")):
            volume = float((label.array == side).sum() * voxel_mm3)
            assert volume == pytest.approx(float(c.meta[key]), abs=0.5)
            assert 350 < volume < 1400, (c.case_id, side, volume)
            by_group.setdefault(c.meta["group"], []).append(volume)
    assert np.mean(by_group["FRDA"]) < np.mean(by_group["healthy"])


def test_chi_values_and_site_scaling(cases):
    medians = {}
    for c in cases:
        image = load_image(c.image)
        ppm = _ppm(c, image.array)
        dn = load_label(c.label("true"), image).array > 0
        cerebellum = load_label(c.cerebellum, image, allowed=(0, 1)).array > 0
        brain = ppm != 0
        assert np.abs(np.percentile(ppm[brain], [1, 99])).max() < 0.3, c.case_id  # ppm range, not ppb
        background = np.median(ppm[cerebellum & ~dn])
        assert ppm[dn].mean() > background + 0.01, c.case_id  # DN brighter than surrounding cerebellum
        assert 0.0 < ppm[dn].mean() < 0.25
        if c.meta["units"] == "ppb":
            assert np.abs(image.array[brain]).max() > 20  # stored in ppb
        medians.setdefault(c.site, []).append(float(np.median(ppm[brain])))
    # Zero-reference offsets: siteE (+0.02 ppm) vs siteI (-0.02 ppm).
    assert np.mean(medians["siteE"]) - np.mean(medians["siteI"]) > 0.025


def test_laterality_in_world_coordinates(cases):
    stored = {}
    for c in cases:
        image = load_image(c.image)
        for rater in c.labels:
            sides = check_sides(load_label(c.labels[rater], image).array, image.affine)
            assert sides["left_x_mm"] < 0 < sides["right_x_mm"], (c.case_id, rater, sides)
        stored[c.site] = "".join(nib.aff2axcodes(nib.load(str(c.image)).affine))
    assert stored["siteD"] == "LAS" and stored["siteG"] == "LPS" and stored["siteA"] == "RAS"


def test_site_grids_and_statistics(cases):
    spacings, spreads = {}, {}
    for c in cases:
        image = load_image(c.image)
        expected = site_voxel_size(SITE_PROFILES[c.site], PRESETS["tiny"])
        assert np.allclose(image.spacing, expected, atol=1e-4)
        assert np.allclose([float(v) for v in c.meta["voxel_size"].split(",")], expected)
        spacings[c.site] = image.spacing
        ppm = _ppm(c, image.array)
        spreads[c.site] = float(np.std(ppm[ppm != 0]))
    assert len(set(spacings.values())) >= 2  # isotropic and anisotropic sites
    # Gain, regularization and smoothing: image contrast differs clearly between sites.
    assert max(spreads.values()) > 1.5 * min(spreads.values())


def test_rater_disagreement_is_modest(cases):
    inter, truth, intra, retrace_differs = [], [], [], []
    for c in cases:
        image = load_image(c.image)
        labels = {r: load_label(p, image).array for r, p in c.labels.items()}
        inter.append(_dice(labels["rater1"] > 0, labels["rater2"] > 0))
        truth.append(_dice(labels["rater1"] > 0, labels["true"] > 0))
        if "rater1_retrace" in labels:
            intra.append(_dice(labels["rater1"] > 0, labels["rater1_retrace"] > 0))
            retrace_differs.append(not np.array_equal(labels["rater1"], labels["rater1_retrace"]))
    assert 0.6 < np.mean(inter) < 0.95, inter
    assert 0.6 < np.mean(truth) < 0.97, truth
    assert 0.6 < np.mean(intra) < 0.97, intra
    assert any(retrace_differs)


def test_determinism(tmp_path):
    a = simulate_case(0, 0, SITE_PROFILES["siteA"], PRESETS["tiny"], seed=3, group="healthy")
    b = simulate_case(0, 0, SITE_PROFILES["siteA"], PRESETS["tiny"], seed=3, group="healthy")
    c = simulate_case(0, 0, SITE_PROFILES["siteA"], PRESETS["tiny"], seed=4, group="healthy")
    for key in ("qsm", "dn_true", "cerebellum"):
        assert a[key].tobytes() == b[key].tobytes()
    assert a["raters"]["rater2"].tobytes() == b["raters"]["rater2"].tobytes()
    assert not np.array_equal(a["qsm"], c["qsm"]) and not np.array_equal(a["dn_true"], c["dn_true"])
    # Same seed through the files, whatever the process count (1 vs 2 joblib workers).
    kwargs = {"seed": 5, "sites": ["siteD", "siteG"], "n_subjects_per_site": 1, "progress": False}
    m1 = generate_dataset(tmp_path / "one", "tiny", n_jobs=1, **kwargs)
    m2 = generate_dataset(tmp_path / "two", "tiny", n_jobs=2, **kwargs)
    for c1, c2 in zip(read_manifest(m1), read_manifest(m2), strict=True):
        for p1, p2 in [(c1.image, c2.image), (c1.labels["rater1"], c2.labels["rater1"])]:
            data1, data2 = (np.asarray(nib.load(str(p)).dataobj) for p in (p1, p2))
            assert data1.tobytes() == data2.tobytes()


def test_dipole_physics_sphere():
    """Uniform sphere: ~zero field inside (Lorentz), TKD underestimates but recovers its sign and scale."""
    n, spacing = 48, (1.0, 1.0, 1.0)
    grid = np.indices((n, n, n)) - n / 2 + 0.5
    radius = np.sqrt((grid**2).sum(axis=0))
    sphere = (radius < 8).astype(np.float32) * 0.1
    b0 = b0_direction(0.0, 0.0)
    field = forward_field(sphere, spacing, b0)
    inside = radius < 5
    assert np.abs(field[inside]).max() < 0.01  # 10 % of chi
    assert field.max() > 0.02 and field.min() < -0.01  # dipole pattern outside
    mask = radius < 20
    for method, param in (("TKD", 0.15), ("Tikhonov", 0.05), ("GradientL2", 0.02)):
        chi = reconstruct(field, mask, spacing, b0, method, tkd_threshold=param, regularization=param)
        ratio = (chi[inside].mean() - chi[mask & (radius > 12)].mean()) / 0.1
        assert 0.4 < ratio < 1.1, (method, ratio)
    with pytest.raises(ValueError, match="unknown reconstruction"):
        reconstruct(field, mask, spacing, b0, "MEDI")


def test_volume_preserving_mask():
    fraction = np.zeros((6, 6, 6), np.float32)
    fraction[1:4, 1:4, 2] = 0.6
    fraction[1:4, 1:4, 3] = 0.4
    mask = volume_preserving_mask(fraction)
    assert mask.sum() == round(float(fraction.sum())) and mask[1:4, 1:4, 2].all()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        generate_dataset(tmp_path / "x", preset="huge")
    with pytest.raises(ValueError, match="unknown site"):
        generate_dataset(tmp_path / "x", sites=["siteZ"])
    with pytest.raises(ValueError, match="unknown group"):
        sample_subject(np.random.default_rng(0), "ALS")


def test_make_data_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli_main(["make-data", "--out", str(out), "--preset", "tiny"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "notes.txt").exists()
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(out, "tiny", sites=["siteA"], n_subjects_per_site=1, progress=False)
    assert cli_main(["make-data", "--out", str(out), "--preset", "tiny", "--sites", "siteB",
                     "--n-subjects-per-site", "1", "--overwrite"]) == 0
    cases = read_manifest(out / "manifest.tsv")
    assert [c.case_id for c in cases] == ["siteB_sub001"]
