"""The `evaluate` verb end to end on real NIfTI files: metrics, missing predictions, compare, reliability,
template + baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_dn import write_cases

from dentate_research.cli.main import main
from dentate_research.data.io import load_label, save_like
from dentate_research.data.manifest import read_manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 synthetic scans with raters true / rater1 / rater1_retrace (= rater1) / rater2 (left side eroded)."""
    root = tmp_path_factory.mktemp("evaluate_cli")
    return write_cases(root / "data", 4, raters=("true", "rater1", "rater1_retrace", "rater2"))


def _write_predictions(manifest: Path, out: Path, rater: str = "true", skip: tuple[str, ...] = ()) -> Path:
    """Copy a rater's labels as predictions, half flat (<id>_seg) and half in DentateSeg folders (<id>/<id>_seg)."""
    for i, case in enumerate(read_manifest(manifest)):
        if case.case_id in skip:
            continue
        target = out / f"{case.case_id}_seg.nii.gz" if i % 2 == 0 else out / case.case_id / f"{case.case_id}_seg.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(case.label(rater), target)
    return out


def test_metrics_with_both_prediction_layouts(dataset, tmp_path):
    preds = _write_predictions(dataset, tmp_path / "preds")
    code = main(["evaluate", "metrics", "--manifest", str(dataset), "--pred-dir", str(preds), "--method", "oracle",
                 "--reference", "true", "--out", str(tmp_path / "out")])
    assert code == 0
    table = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert len(table) == 8 and (table["dice"] == 1.0).all() and (table["hd95_mm"] == 0.0).all()
    assert set(table["method"]) == {"oracle"} and set(table["group"]) == {"healthy", "FRDA"}
    for name in ("summary.md", "summary_by_site.csv", "summary_by_group.csv", "agreement.csv",
                 "bland_altman_volume.png", "dice_by_site.png", "report.json"):
        assert (tmp_path / "out" / name).exists(), name
    assert "1.00 ± 0.00" in (tmp_path / "out" / "summary.md").read_text()


def test_missing_prediction_is_an_error_naming_case_and_path(dataset, tmp_path, capsys):
    missing = read_manifest(dataset)[1].case_id
    preds = _write_predictions(dataset, tmp_path / "preds", skip=(missing,))
    code = main(["evaluate", "metrics", "--manifest", str(dataset), "--pred-dir", str(preds), "--method", "m",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert missing in err and str(preds / f"{missing}_seg.nii.gz") in err
    assert not (tmp_path / "out" / "per_case.csv").exists()
    code = main(["evaluate", "metrics", "--manifest", str(dataset), "--pred-dir", str(preds), "--method", "m",
                 "--out", str(tmp_path / "out"), "--allow-missing", "--no-plots"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n_missing_predictions"] == 1 and report["flags"]["missing_prediction"] == 2
    assert "missing_prediction: 2" in (tmp_path / "out" / "summary.md").read_text()


def test_compare_two_method_tables(dataset, tmp_path):
    good = _write_predictions(dataset, tmp_path / "good")
    worse = tmp_path / "worse"
    rng = np.random.default_rng(0)
    for case in read_manifest(dataset):  # drop a random 30-60 % of each DN: paired differences are all positive
        label = load_label(case.label("true"))
        arr = label.array.copy()
        arr[(arr > 0) & (rng.random(arr.shape) < rng.uniform(0.3, 0.6))] = 0
        save_like(arr, label, worse / f"{case.case_id}_seg.nii.gz", is_label=True)
    for name, folder in (("good", good), ("worse", worse)):
        assert main(["evaluate", "metrics", "--manifest", str(dataset), "--pred-dir", str(folder), "--method", name,
                     "--reference", "true", "--out", str(tmp_path / name / "eval"), "--no-plots"]) == 0
    code = main(["evaluate", "compare", str(tmp_path / "good" / "eval" / "per_case.csv"),
                 str(tmp_path / "worse" / "eval" / "per_case.csv"), "--out", str(tmp_path / "cmp")])
    assert code == 0
    comp = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    dice_rows = comp[comp["metric"] == "dice"].set_index("side")
    assert set(dice_rows.index) == {"left", "right"}
    assert (dice_rows["n"] == 4).all() and (dice_rows["mean_diff"] > 0.1).all()
    assert (dice_rows["rank_biserial"] == 1.0).all()
    assert dice_rows["p_ttest"].notna().all()
    assert "P (Wilcoxon)" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_reliability(dataset, tmp_path):
    assert main(["evaluate", "reliability", "--manifest", str(dataset), "--out", str(tmp_path / "rel")]) == 0
    summary = pd.read_csv(tmp_path / "rel" / "reliability.csv")
    intra = summary[(summary["study"] == "intrarater") & (summary["form"] == "ICC2") & (summary["side"] == "left")]
    assert intra["icc"].iloc[0] == pytest.approx(1.0) and intra["dice_mean"].iloc[0] == pytest.approx(1.0)
    inter = summary[(summary["study"] == "interrater") & (summary["form"] == "ICC2")].set_index("side")
    assert inter.loc["left", "dice_mean"] < 0.9 and inter.loc["right", "dice_mean"] == pytest.approx(1.0)
    assert inter.loc["left", "icc"] < 1.0
    assert "ICC(2,1) two-way random, absolute agreement" in (tmp_path / "rel" / "reliability.md").read_text()


def test_template_then_baselines_and_leakage_error(dataset, tmp_path, capsys):
    cases = read_manifest(dataset)
    train, test = [c.case_id for c in cases[:3]], [cases[3].case_id]
    assert main(["evaluate", "template", "--manifest", str(dataset), "--case-ids", *train, "--spacing", "2",
                 "--iterations", "1", "--registration-spacing", "3", "--rater", "rater1",
                 "--out", str(tmp_path / "tpl")]) == 0
    assert (tmp_path / "tpl" / "template.json").exists()
    out = tmp_path / "cls"
    code = main(["evaluate", "baseline", "--manifest", str(dataset), "--baseline", "classical", "--template",
                 str(tmp_path / "tpl"), "--case-ids", *test, "--registration-spacing", "3", "--out", str(out),
                 "--no-plots", "--param", "local_refinement=false"])
    assert code == 0
    assert (out / "segmentations" / f"{test[0]}_seg.nii.gz").exists()
    table = pd.read_csv(out / "per_case.csv")
    assert len(table) == 2 and table["dice"].min() > 0.8
    assert {"baseline_threshold", "baseline_flags", "baseline_volume_ratio", "baseline_registration_metric"} <= set(
        table.columns)
    code = main(["evaluate", "baseline", "--manifest", str(dataset), "--baseline", "atlas", "--template",
                 str(tmp_path / "tpl"), "--case-ids", train[0], "--out", str(tmp_path / "leak")])
    assert code == 2 and "leakage" in capsys.readouterr().err
    code = main(["evaluate", "baseline", "--manifest", str(dataset), "--baseline", "atlas", "--template",
                 str(tmp_path / "tpl"), "--case-ids", *test, "--out", str(tmp_path / "bad"), "--param", "nonsense=1"])
    assert code == 2 and "nonsense" in capsys.readouterr().err


def test_case_selection_from_a_split_file(tiny_dataset, tiny_splits, tmp_path):
    from dentate_research.data.splits import load_split

    train_ids = set(load_split(tiny_splits, 0).train)
    code = main(["evaluate", "reliability", "--manifest", str(tiny_dataset), "--splits", str(tiny_splits),
                 "--fold", "0", "--part", "train", "--out", str(tmp_path / "rel")])
    per_case = pd.read_csv(tmp_path / "rel" / "reliability_per_case.csv")
    assert code == 0 and set(per_case["case"]) <= train_ids and len(set(per_case["case"])) >= 1
    assert main(["evaluate", "reliability", "--manifest", str(tiny_dataset), "--splits", str(tiny_splits),
                 "--fold", "7", "--out", str(tmp_path / "bad")]) == 2
