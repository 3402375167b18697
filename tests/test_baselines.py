"""Template building and the classical / atlas baselines on synthetic scans and on tiny phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_dn import make_scan, write_cases

from dentate_research.baselines import AtlasBaseline, ClassicalBaseline, Template, build_template, check_no_overlap
from dentate_research.baselines.template import register
from dentate_research.data.io import DataError, Volume, load_image, load_label
from dentate_research.data.laterality import world_centroid
from dentate_research.data.manifest import read_manifest
from dentate_research.evaluation.metrics import evaluate_case


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[list, Template, Path]:
    """5 synthetic scans at 2 mm; a template (saved and re-loaded) from the first 3."""
    root = tmp_path_factory.mktemp("synthetic_baseline")
    cases = read_manifest(write_cases(root / "data", 5, raters=("rater1",)))
    template = build_template(cases[:3], rater="rater1", spacing_mm=2.0, registration_spacing_mm=3.0,
                              n_iterations=1, progress=False)
    template.save(root / "template")
    return cases, Template.load(root / "template"), root


def test_template_round_trip_and_contents(synthetic):
    cases, template, root = synthetic
    assert template.case_ids == [c.case_id for c in cases[:3]]
    assert template.rater == "rater1"
    assert template.dn_probability.shape == (2, *template.image.shape)
    assert template.cerebellum_probability is not None
    assert template.dn_probability.min() >= 0.0 and template.dn_probability.max() <= 1.0
    # template space is the reference case's space: the left atlas lies ~28 mm left of the right one (RAS)
    left = world_centroid(template.dn_probability[0] > 0.5, template.affine)
    right = world_centroid(template.dn_probability[1] > 0.5, template.affine)
    assert 20 < right[0] - left[0] < 36
    with pytest.raises(DataError, match="template.json"):
        Template.load(root / "data")


def test_leakage_check(synthetic):
    cases, template, _ = synthetic
    check_no_overlap(template, cases[3:])
    with pytest.raises(DataError, match="leakage"):
        check_no_overlap(template, cases[2:])


def test_classical_and_atlas_baselines_on_held_out_synthetic_scans(synthetic):
    cases, template, _ = synthetic
    classical = ClassicalBaseline(template, registration_spacing_mm=3.0)
    atlas = AtlasBaseline(template, registration_spacing_mm=3.0)
    for case in cases[3:]:
        image = load_image(case.image)
        ref = load_label(case.label("rater1"), reference=image)
        labels, diag = classical.segment_with_diagnostics(image)
        assert labels.dtype == np.uint8 and labels.shape == image.shape
        rows = evaluate_case(labels, ref, image)
        assert min(r["dice"] for r in rows) > 0.85, rows
        assert world_centroid(labels == 1, image.affine)[0] < 0 < world_centroid(labels == 2, image.affine)[0]
        assert diag["flags"] == [] and diag["left_n_seeds"] > 0
        assert min(r["dice"] for r in evaluate_case(atlas.segment(image), ref, image)) > 0.5


def test_low_contrast_scan_is_flagged(synthetic):
    _, template, _ = synthetic
    image, _, _, affine = make_scan(11, dn_ppm=-0.015, noise_ppm=0.01)  # DN no brighter than its surroundings
    labels, diag = ClassicalBaseline(template, registration_spacing_mm=3.0, local_refinement=False
                                     ).segment_with_diagnostics(Volume(image, affine))
    assert "left:low_contrast" in diag["flags"] and "right:low_contrast" in diag["flags"]
    assert "low_contrast" in diag["left_flags"]
    assert diag["left_core_contrast_sd"] < 3.0


def test_vein_touching_the_dn_leaks_only_within_the_search_margin(synthetic):
    _, template, _ = synthetic
    image, labels, _, affine = make_scan(12, vein_ppm=0.19)  # bright vein leaving the left DN
    volume, ref = Volume(image, affine), Volume(labels, affine)
    common = {"registration_spacing_mm": 3.0, "local_refinement": False}
    seg, diag = ClassicalBaseline(template, **common).segment_with_diagnostics(volume)
    rows = evaluate_case(seg, ref)
    assert diag["left_touches_search_boundary"] and rows[0]["volume_pred_mm3"] > rows[0]["volume_ref_mm3"]
    assert rows[0]["dice"] > 0.9 and rows[1]["dice"] > 0.95
    wide, wide_diag = ClassicalBaseline(template, search_margin_mm=12.0, leak_touch_ratio=1.1,
                                        **common).segment_with_diagnostics(volume)
    wide_rows = evaluate_case(wide, ref)
    assert wide_rows[0]["volume_pred_mm3"] > rows[0]["volume_pred_mm3"] + 100  # grows further along the vein
    assert "left:leak_suspected" in wide_diag["flags"] and "right:leak_suspected" not in wide_diag["flags"]


def test_registration_is_reproducible(synthetic):
    cases, template, _ = synthetic
    image = load_image(cases[3].image)
    first = register(image, template.volume, spacing_mm=3.0).transform.GetParameters()
    second = register(image, template.volume, spacing_mm=3.0).transform.GetParameters()
    assert first == second


def test_parameter_validation(synthetic):
    _, template, _ = synthetic
    with pytest.raises(ValueError, match="unknown ClassicalBaseline parameter"):
        ClassicalBaseline(template, treshold_k=2)
    with pytest.raises(ValueError, match="seed_k"):
        ClassicalBaseline(template, threshold_k=5, seed_k=2)
    with pytest.raises(ValueError, match="threshold"):
        AtlasBaseline(template, threshold=1.5)
    with pytest.raises(DataError, match="at least 2"):
        build_template([], rater="rater1")


@pytest.mark.slow
def test_classical_baseline_on_tiny_phantoms(tiny_dataset):
    """Template from subject 1 of 5 sites; the held-out subjects of the 3 sites with 2 subjects are segmented."""
    cases = read_manifest(tiny_dataset)
    train = [c for c in cases if c.subject.endswith("001")][:5]
    test = [c for c in cases if not c.subject.endswith("001")]
    assert test, "the tiny preset should have held-out subjects"
    template = build_template(train, rater="rater1", spacing_mm=2.0, registration_spacing_mm=3.0, n_iterations=1,
                              progress=False)
    check_no_overlap(template, test)
    dices = []
    for case in test:
        image = load_image(case.image)
        ref = load_label(case.label("rater1"), reference=image)
        labels = ClassicalBaseline(template, registration_spacing_mm=3.0).segment(image)
        dices += [r["dice"] for r in evaluate_case(labels, ref, image)]
    assert np.mean(dices) > 0.55, dices
    assert min(dices) > 0.3, dices
