"""Metrics on hand-built masks with known answers, the empty-mask policy, and cross-checks against MONAI."""

from __future__ import annotations

import numpy as np
import pytest

from dentate_research.data.io import Volume, save_nifti
from dentate_research.data.manifest import Case
from dentate_research.evaluation.metrics import (
    MissingPredictionError,
    dice,
    evaluate_case,
    evaluate_cases,
    hd95_and_assd,
    side_metrics,
    voxel_volume_mm3,
)


def _grid(shape=(20, 20, 20), spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(shape) / 2 * np.asarray(spacing)
    return affine


def test_dice_known_overlap():
    a = np.zeros((12, 12, 12), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True          # 64 voxels
    b[4:8, 2:6, 2:6] = True          # 64 voxels, overlap 2*4*4 = 32
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    c = np.zeros_like(a)
    c[9:11, 9:11, 9:11] = True
    assert dice(a, c) == 0.0


def test_distances_in_mm_on_anisotropic_grid():
    spacing = (0.5, 1.0, 3.0)
    ref = np.zeros((10, 10, 12), bool)
    pred = np.zeros_like(ref)
    ref[2:8, 2:8, 5] = True           # one-voxel slab: every voxel is surface
    pred[2:8, 2:8, 7] = True          # 2 slices above: 2 * 3 mm = 6 mm everywhere
    hd, assd = hd95_and_assd(pred, ref, spacing)
    assert hd == pytest.approx(6.0)
    assert assd == pytest.approx(6.0)
    # the same offset along the 0.5 mm axis is 1 mm
    ref2 = np.zeros((12, 10, 10), bool)
    pred2 = np.zeros_like(ref2)
    ref2[5, 2:8, 2:8] = True
    pred2[7, 2:8, 2:8] = True
    hd2, assd2 = hd95_and_assd(pred2, ref2, spacing)
    assert hd2 == pytest.approx(1.0)
    assert assd2 == pytest.approx(1.0)


def test_hd95_ignores_a_few_outlier_surface_points_but_max_does_not():
    spacing = (1.0, 1.0, 1.0)
    ref = np.zeros((40, 40, 40), bool)
    ref[10:30, 10:30, 10:30] = True
    pred = ref.copy()
    pred[35, 35, 35] = True           # one stray voxel far away
    hd, assd = hd95_and_assd(pred, ref, spacing)
    assert hd == pytest.approx(0.0)   # 1 point out of > 2000 surface points is below the 95th percentile
    assert 0 < assd < 0.05


def test_volume_uses_the_grid_voxel_size_including_oblique_affines():
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    assert voxel_volume_mm3(affine) == pytest.approx(0.5)
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rot @ np.diag([0.5, 0.5, 2.0])
    assert voxel_volume_mm3(oblique) == pytest.approx(0.5)
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[1:3, 1:6, 1:2] = 1           # 10 voxels
    row = evaluate_case(ref, Volume(ref, oblique))[0]
    assert row["volume_ref_mm3"] == pytest.approx(5.0)
    assert row["volume_pred_mm3"] == pytest.approx(5.0)


def test_mean_susceptibility_inside_masks():
    affine = _grid((10, 10, 10))
    image = np.zeros((10, 10, 10), np.float32)
    image[2:4, 2:4, 2:4] = 0.15
    image[6:8, 6:8, 6:8] = 0.05
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:4, 2:4, 2:4] = 1
    pred = ref.copy()
    pred[4, 2:4, 2:4] = 1            # 4 extra voxels at 0 ppm: mean = 8*0.15/12
    rows = evaluate_case(pred, Volume(ref, affine), Volume(image, affine))
    left = rows[0]
    assert left["side"] == "left"
    assert left["chi_ref_ppm"] == pytest.approx(0.15)
    assert left["chi_pred_ppm"] == pytest.approx(0.15 * 8 / 12, rel=1e-5)


def test_empty_mask_policy():
    spacing = (1.0, 1.0, 1.0)
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    both = side_metrics(empty, empty, spacing, 1.0)
    assert np.isnan(both["dice"]) and np.isnan(both["hd95_mm"]) and both["flag"] == "both_empty"
    miss = side_metrics(empty, full, spacing, 1.0)
    assert miss["dice"] == 0.0 and np.isnan(miss["hd95_mm"]) and np.isnan(miss["assd_mm"])
    assert miss["flag"] == "empty_prediction" and miss["volume_pred_mm3"] == 0.0
    extra = side_metrics(full, empty, spacing, 1.0)
    assert extra["dice"] == 0.0 and np.isnan(extra["hd95_mm"]) and extra["flag"] == "empty_reference"


def test_sides_are_scored_separately():
    affine = _grid((16, 16, 16))
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[2:5, 6:10, 6:10] = 1
    ref[11:14, 6:10, 6:10] = 2
    swapped = np.where(ref == 1, 2, np.where(ref == 2, 1, 0)).astype(np.uint8)
    rows = evaluate_case(swapped, Volume(ref, affine))
    assert [r["side"] for r in rows] == ["left", "right"]
    assert rows[0]["dice"] == 0.0 and rows[1]["dice"] == 0.0
    assert evaluate_case(ref, Volume(ref, affine))[1]["dice"] == 1.0


def _random_blob(rng: np.random.Generator, shape, n_balls=3) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    mask = np.zeros(shape, bool)
    for _ in range(n_balls):
        c = rng.uniform(6, np.asarray(shape) - 6)
        r = rng.uniform(2.5, 5.0)
        mask |= ((idx - c) ** 2).sum(-1) <= r * r
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_check_against_monai(seed):
    import torch
    from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (30, 26, 22)
    spacing = (0.7, 1.1, 2.3)
    pred, ref = _random_blob(rng, shape), _random_blob(rng, shape)
    ours_hd, ours_assd = hd95_and_assd(pred, ref, spacing)
    p = torch.from_numpy(np.stack([~pred, pred]))[None].float()
    r = torch.from_numpy(np.stack([~ref, ref]))[None].float()
    hd = compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=spacing)
    assd = compute_average_surface_distance(p, r, include_background=False, symmetric=True, spacing=spacing)
    metric = DiceMetric(include_background=False)
    metric(p, r)
    assert dice(pred, ref) == pytest.approx(float(metric.aggregate()), abs=1e-6)
    assert ours_hd == pytest.approx(float(hd), abs=1e-4)
    assert ours_assd == pytest.approx(float(assd), abs=1e-4)


def test_evaluate_cases_missing_prediction_is_an_error_unless_allowed(tmp_path):
    affine = _grid((12, 12, 12), (1.0, 1.0, 2.0))
    image = np.zeros((12, 12, 12), np.float32)
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:5, 4:8, 4:8] = 1
    labels[7:10, 4:8, 4:8] = 2
    image[labels > 0] = 0.12
    cases = []
    for cid in ("c1", "c2"):
        img = save_nifti(image, affine, tmp_path / f"{cid}_qsm.nii.gz")
        lab = save_nifti(labels, affine, tmp_path / f"{cid}_dn.nii.gz", is_label=True)
        cases.append(Case(cid, cid, "s", img, {"rater1": lab}, None, {"group": "healthy"}))
    preds = tmp_path / "preds"
    save_nifti(labels, affine, preds / "c1_seg.nii.gz", is_label=True)
    with pytest.raises(MissingPredictionError) as err:
        evaluate_cases(cases, preds, method="m", progress=False)
    assert "c2" in str(err.value) and str(preds / "c2_seg.nii.gz") in str(err.value)
    table = evaluate_cases(cases, preds, method="m", allow_missing=True, progress=False)
    assert len(table) == 4
    assert (table.loc[table["case"] == "c2", "flag"] == "missing_prediction").all()
    c1 = table[table["case"] == "c1"]
    assert c1["dice"].tolist() == [1.0, 1.0]
    assert c1["volume_ref_mm3"].iloc[0] == pytest.approx(3 * 4 * 4 * 2.0)
    assert c1["chi_ref_ppm"].iloc[0] == pytest.approx(0.12)
    assert set(table.columns) >= {"case", "subject", "site", "group", "method", "fold", "side", "reference"}


def test_ppb_images_are_converted_to_ppm_and_unknown_units_rejected(tmp_path):
    affine = _grid((10, 10, 10))
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:4, 2:4, 2:4] = 1
    image = np.where(labels > 0, 150.0, 0.0).astype(np.float32)  # 150 ppb = 0.15 ppm
    img = save_nifti(image, affine, tmp_path / "img.nii.gz")
    lab = save_nifti(labels, affine, tmp_path / "lab.nii.gz", is_label=True)
    case = Case("c", "c", "s", img, {"rater1": lab}, None, {"units": "ppb"})
    table = evaluate_cases([case], {"c": lab}, method="m", progress=False)
    assert table["chi_ref_ppm"].iloc[0] == pytest.approx(0.15)
    case.meta["units"] = "Hz"
    with pytest.raises(ValueError, match="units 'hz'"):
        evaluate_cases([case], {"c": lab}, method="m", progress=False)


def test_a_metric_is_one_entry_of_side_metrics(monkeypatch):
    """Adding a per-side metric is one entry of SIDE_METRICS: evaluate_case returns it for both sides."""
    from dentate_research.evaluation import metrics

    monkeypatch.setitem(metrics.SIDE_METRICS, "voxels_pred", lambda m: float(m.pred.sum()))
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:5, 4:7, 4:7] = 1
    labels[7:10, 4:7, 4:7] = 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rows = metrics.evaluate_case(Volume(labels, affine), Volume(labels, affine))
    assert [r["voxels_pred"] for r in rows] == [27.0, 27.0]
    assert all(r["volume_pred_mm3"] == pytest.approx(27 * 8.0) and r["dice"] == 1.0 for r in rows)
