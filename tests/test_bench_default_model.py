"""The default-model benchmark's tables: lost sides, per-scan seconds and the QC confusion counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_default_model import qc_confusion, summarize  # noqa: E402


def rows(candidate: str, bench: str, case: str, status: str, dice: dict[str, float | None], seconds: float,
         reference: str) -> list[dict]:
    return [{"candidate": candidate, "bench": bench, "case": case, "reference": reference, "side": side,
             "dice": value, "status": status, "seconds": seconds} for side, value in dice.items()]


@pytest.fixture
def per_case() -> pd.DataFrame:
    table = [
        *rows("m", "lamina", "a", "ok", {"left": 0.9, "right": 0.8}, 1.0, "true"),
        *rows("m", "lamina", "b", "flagged", {"left": 0.2, "right": 0.85}, 3.0, "true"),
        *rows("m", "lamina", "c", "ok", {"left": 0.88, "right": 0.4}, 2.0, "true"),
        *rows("m", "lamina", "d", "failed", {"left": None, "right": None}, 0.5, "true"),
        *rows("m", "lamina", "e", "flagged", {"left": 0.9, "right": 0.9}, 1.5, "true"),
        # a phantom bench: scored against rater1 (primary) and the truth (not summarized)
        *rows("m", "heldout_easy", "h1", "ok", {"left": 0.9, "right": 0.92}, 1.0, "rater1"),
        *rows("m", "heldout_easy", "h1", "ok", {"left": 0.1, "right": 0.1}, 1.0, "true"),
    ]
    return pd.DataFrame(table)


def test_summary_counts_lost_sides_and_seconds_per_scan(per_case):
    summary = summarize(per_case).set_index(["bench", "side"])
    left = summary.loc[("lamina", "left")]
    assert left["n"] == 5 and left["lost_sides"] == 2  # 0.2 and the failed scan (no prediction = Dice 0)
    assert left["worst"] == 0.0 and left["mean"] == pytest.approx((0.9 + 0.2 + 0.88 + 0 + 0.9) / 5)
    assert left["seconds_mean"] == pytest.approx(8.0 / 5) and left["seconds_max"] == 3.0
    assert summary.loc[("lamina", "right"), "lost_sides"] == 2
    easy = summary.loc[("heldout_easy", "left")]
    assert easy["reference"] == "rater1" and easy["mean"] == pytest.approx(0.9) and easy["lost_sides"] == 0


def test_qc_confusion_finds_an_ok_scan_with_a_lost_side(per_case):
    confusion = qc_confusion(per_case).set_index("bench")
    lamina = confusion.loc["lamina"]
    assert lamina["flagged_with_lost_side"] == 2  # b (flagged) and d (failed counts as flagged)
    assert lamina["ok_with_lost_side"] == 1  # c: QC said ok although the right side was lost
    assert lamina["flagged_all_sides_good"] == 1 and lamina["ok_all_sides_good"] == 1
    assert confusion.loc["heldout_easy", "ok_all_sides_good"] == 1  # judged against rater1, not the truth rows


def test_with_inferer_copies_a_model_with_other_inference_settings(tmp_path):
    """benchmarks/with_inferer.py (a real process): the copy loads with the new settings and the same weights, the
    source is untouched, the change is recorded for the model card; a bad value writes nothing."""
    import json
    import subprocess

    from inference_helpers import trained_toy_model

    from dentate_research.inference.pipeline import DentatePredictor

    source = trained_toy_model(tmp_path)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "with_inferer.py"
    out = tmp_path / "with_tta"
    done = subprocess.run([sys.executable, str(script), "--model", str(source), "--out", str(out), "--set",
                           "segmentation.tta=lr_swap", "--set", "localization.sw_batch_size=3", "--reason", "test"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    copy, original = DentatePredictor.from_model_dir(out), DentatePredictor.from_model_dir(source)
    assert copy.segmenter.settings.tta == "lr_swap" and copy.localizer.settings.sw_batch_size == 3
    assert original.segmenter.settings.tta == "none"
    record = json.loads((out / "inferer_changes.json").read_text())
    assert record["changes"]["segmentation"]["tta"] == {"from": "none", "to": "lr_swap"} and record["reason"] == "test"
    assert (out / "segmentation" / "checkpoints" / "best.pt").read_bytes() == (
        source / "segmentation" / "checkpoints" / "best.pt").read_bytes()
    bad = subprocess.run([sys.executable, str(script), "--model", str(source), "--out", str(tmp_path / "bad"), "--set",
                          "segmentation.tta=sideways"], capture_output=True, text=True)
    assert bad.returncode == 2 and "sideways" in bad.stderr and not (tmp_path / "bad").exists()


def test_second_rater_is_scored_like_a_candidate_without_timing_or_qc(tmp_path):
    """The `rater2` rows (real NIfTI files): the second rater's tracing against the same references, Dice as for a
    candidate; in the summary without seconds, and never counted in the QC confusion."""
    import nibabel as nib
    import numpy as np
    from bench_default_model import SECOND_RATER, BenchScan, score_second_rater, tables_markdown

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image = np.zeros((12, 10, 8), np.float32)
    first = np.zeros(image.shape, np.uint8)
    first[1:5, 2:6, 2:6] = 1  # left: 64 voxels
    first[7:11, 2:6, 2:6] = 2  # right: 64 voxels
    second = first.copy()
    second[1:3, 2:6, 2:6] = 0  # the second rater traced half of the left nucleus: Dice 2*32/(64+32) = 2/3
    paths = {}
    for name, array in (("qsm", image), ("rater1", first), ("true", first), ("rater2", second)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), paths[name])
    scans = [BenchScan("heldout_hard", "s1", paths["qsm"], {"true": paths["true"], "rater1": paths["rater1"]},
                       {"site": "siteI"}, paths["rater2"]),
             BenchScan("lamina", "l1", paths["qsm"], {"true": paths["true"]})]  # no second rater: no rows
    table = score_second_rater(scans)
    assert set(table["candidate"]) == {SECOND_RATER} and set(table["case"]) == {"s1"}
    dice = table.set_index(["reference", "side"])["dice"]
    assert dice[("rater1", "left")] == pytest.approx(2 / 3) and dice[("rater1", "right")] == pytest.approx(1.0)
    assert dice[("true", "left")] == pytest.approx(2 / 3)

    model = pd.DataFrame(rows("m", "heldout_hard", "s1", "ok", {"left": 0.8, "right": 0.3}, 1.2, "rater1"))
    per_case = pd.concat([model, table], ignore_index=True)
    summary = summarize(per_case).set_index(["candidate", "side"])
    assert summary.loc[(SECOND_RATER, "left"), "mean"] == pytest.approx(2 / 3)
    assert np.isnan(summary.loc[(SECOND_RATER, "left"), "seconds_mean"])
    confusion = qc_confusion(per_case)
    assert list(confusion["candidate"]) == ["m"] and confusion.loc[0, "ok_with_lost_side"] == 1
    text = "\n".join(tables_markdown(summarize(per_case), confusion))
    assert f"| {SECOND_RATER} | heldout_hard | rater1 | left | 1 | 0.667 +/- nan | 0.667 | 0 | - |" in text
