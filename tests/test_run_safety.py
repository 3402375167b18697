"""``train`` run folders, config/data errors and split creation; ``evaluate`` outputs, exclusions and prediction
lookup (issue: runs and outputs that survive interruption, concurrency and bad output locations)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from synthetic_dn import write_cases

from dentate_research.cli.main import main
from dentate_research.data.io import DataError
from dentate_research.data.manifest import read_manifest
from dentate_research.data.splits import make_splits, write_splits
from dentate_research.training.api import resolve_split
from dentate_research.training.rundir import RUN_CLAIM, claim_run_dir
from dentate_research.training.toy_data import make_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("run_safety_toy"), n_cases=6, seed=4)


def _base(manifest: Path, runs: Path) -> list[str]:
    return ["arch=unet", "trainer=smoke", "logger=none", "data=manifest", f"data.manifest={manifest}",
            "data.label_rater='true'", "data.grid.segmentation.spacing_mm=2.0",
            "data.grid.segmentation.patch_size=[32,32,32]", "arch.kwargs.channels=[8,16,32]",
            "arch.kwargs.strides=[2,2]", "trainer.epochs=1", "trainer.iterations_per_epoch=1",
            "stage.crop.margin_mm=6", f"paths.runs_dir={runs}"]


EXPLICIT = ["split=explicit", "split.train=[toy000,toy001,toy002]", "split.val=[toy003]"]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ---------------------------------------------------------------- case 7: run folders

def test_existing_run_folder_is_refused_before_hydra_writes(toy, tmp_path, capsys):
    run = tmp_path / "R"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.json").write_text('{"earlier": "run"}')
    for key in ("hydra.run.dir", "paths.run_dir"):
        assert main(["train", *_base(toy, tmp_path / "runs"), *EXPLICIT, f"{key}={run}"]) == 2
        line = _error_line(capsys.readouterr().err)
        assert f"{key}={run}" in line and "not empty" in line and "trainer.resume=true" in line
    assert (run / "model.json").read_text() == '{"earlier": "run"}' and not (run / ".hydra").exists()
    assert not _files(tmp_path / "runs")


def test_resume_without_checkpoint_fails_clearly(toy, tmp_path, capsys):
    run = tmp_path / "fresh"
    assert main(["train", *_base(toy, tmp_path / "runs"), *EXPLICIT, f"hydra.run.dir={run}",
                 "trainer.resume=true"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "trainer.resume=true" in line and "no checkpoint" in line
    assert not run.exists()  # Hydra's folder of the failed run is not left behind


def test_runs_started_in_the_same_second_get_distinct_folders(toy, tmp_path):
    """Hydra's timestamped run folder already holds another run (started the same second): this run moves on."""
    runs = tmp_path / "runs"
    stage_dir = runs / "segmentation" / "unet"
    now = time.time()
    for dt in range(-2, 90):  # every timestamp Hydra may pick while this test starts
        other = stage_dir / time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now + dt))
        other.mkdir(parents=True)
        (other / "model.json").write_text('{"other": "run"}')
        (other / RUN_CLAIM).write_text("pid 1\n")
    assert main(["train", *_base(toy, runs), *EXPLICIT]) == 0
    ours = [p for p in stage_dir.iterdir() if p.name.endswith("_2")]
    # the move is logged (Hydra's console and job log) and lands in the run's own train.log
    assert len(ours) == 1 and "used by another run" in (ours[0] / "train.log").read_text()
    card = json.loads((ours[0] / "model.json").read_text())
    assert card["arch"] == "unet"
    assert (ours[0].with_name(ours[0].name[:-2]) / "model.json").read_text() == '{"other": "run"}'  # untouched
    assert OmegaConf.load(ours[0] / "config.yaml").paths.run_dir == str(ours[0])
    # the claim itself: a second claim of one folder never gets the same folder
    first = claim_run_dir(tmp_path / "same", resume=False, unique=True)
    second = claim_run_dir(tmp_path / "same", resume=False, unique=True)
    assert first.name == "same" and second.name == "same_2"


def test_config_and_data_errors_exit_2_with_one_line_and_no_run_folder(toy, tmp_path, capsys):
    runs = tmp_path / "runs"
    split_file = write_splits(make_splits(read_manifest(toy), n_folds=2, test_fraction=0.0), tmp_path / "splits")
    cases = [
        ([*EXPLICIT, f"data.manifest={tmp_path / 'none.tsv'}"], ["data.manifest=", "none.tsv", "make-data"]),
        ([*EXPLICIT, "data.grid.segmentation.patch_size=[30,30,30]"], ["stage.patch_size=[30, 30, 30]",
                                                                        "divisible"]),
        (["split=cv", f"split.file={split_file}", "split.fold=7"], ["split.fold=7", "unknown fold", "available"]),
        (["split=cv", f"split.file={tmp_path / 'nosplit' / 'splits.json'}"],  # case 10: never silent
         ["split.file=", "nosplit", "make-splits", "split.create_if_missing=true"]),
    ]
    for overrides, expected in cases:
        assert main(["train", *_base(toy, runs), *overrides]) == 2, overrides
        line = _error_line(capsys.readouterr().err)
        assert all(text in line for text in expected), line
        assert not _files(runs), _files(runs)  # no run folder (Hydra's included) left behind
    assert not (tmp_path / "nosplit").exists()


# ---------------------------------------------------------------- case 10: split creation is never silent

def test_missing_split_file_is_created_only_when_asked_or_for_fresh_phantoms(toy, tmp_path, caplog):
    cases = read_manifest(toy)
    path = tmp_path / "s" / "splits.json"
    split = OmegaConf.create({"file": str(path), "fold": 0, "create_if_missing": None, "n_folds": 2,
                              "test_fraction": 0.0, "external_sites": ["site1"], "train": None, "val": None})
    data = OmegaConf.create({"manifest": str(toy), "create_splits_if_missing": True})
    with pytest.raises(DataError, match="make-splits"):  # existing data (not generated now): refuse
        resolve_split(split, cases, 0, data_generated=False, data_cfg=data)
    assert not path.exists()
    caplog.set_level("INFO", logger="dentate_research")
    resolve_split(split, cases, 0, data_generated=True, data_cfg=data)  # phantoms generated by this call
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("dentate_research")]
    out = "\n".join(r.getMessage() for r in warnings)
    assert path.exists() and len(warnings) == 1 and str(path) in out and "site1" in out
    caplog.clear()
    shutil.rmtree(path.parent)
    split.create_if_missing = True  # explicit request: created, with the warning
    resolve_split(split, cases, 0, data_generated=False, data_cfg=data)
    assert path.exists() and "split.create_if_missing=true" in caplog.text
    shutil.rmtree(path.parent)
    split.create_if_missing = False
    with pytest.raises(DataError, match="split.file="):
        resolve_split(split, cases, 0, data_generated=True, data_cfg=data)


# ---------------------------------------------------------------- case 9: evaluate

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """3 synthetic scans whose image files are named '<case>_qsm.nii.gz' (not the case ID)."""
    return write_cases(tmp_path_factory.mktemp("run_safety_eval") / "data", 3, spacing=(3.0, 3.0, 3.0))


def _segment_layout(manifest: Path, out: Path, skip: tuple[str, ...] = ()) -> Path:
    """Predictions as `segment` writes them: OUT/X/X_seg.nii.gz for input X.nii.gz; the last case only findable
    through its metadata JSON (folder renamed)."""
    cases = [c for c in read_manifest(manifest) if c.case_id not in skip]
    for i, case in enumerate(cases):
        stem = case.image.name[: -len(".nii.gz")]
        name = stem if i < len(cases) - 1 else "renamed"
        (out / name).mkdir(parents=True)
        shutil.copy(case.label("true"), out / name / f"{name}_seg.nii.gz")
        (out / name / f"{name}_metadata.json").write_text(json.dumps(
            {"case": name, "input": str(case.image.resolve()), "status": "ok",
             "outputs": {"seg": f"{name}_seg.nii.gz", "metadata": f"{name}_metadata.json"}}))
    return out


def test_evaluate_refuses_overwrite_reports_exclusions_and_finds_segment_layout(synth, tmp_path, capsys):
    preds = _segment_layout(synth, tmp_path / "seg_out")
    args = ["evaluate", "metrics", "--manifest", str(synth), "--pred-dir", str(preds), "--method", "seg",
            "--reference", "true", "--out", str(tmp_path / "a"), "--no-plots"]
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "a" / "per_case.csv")
    assert len(table) == 6 and (table["dice"] == 1.0).all()
    before = (tmp_path / "a" / "per_case.csv").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    line = _error_line(capsys.readouterr().err)
    assert "per_case.csv" in line and "--overwrite" in line
    assert (tmp_path / "a" / "per_case.csv").read_bytes() == before
    assert main([*args, "--overwrite"]) == 0

    missing = read_manifest(synth)[0].case_id
    other = _segment_layout(synth, tmp_path / "other_out", skip=(missing,))
    assert main(["evaluate", "metrics", "--manifest", str(synth), "--pred-dir", str(other), "--method", "other",
                 "--reference", "true", "--out", str(tmp_path / "b"), "--no-plots", "--allow-missing"]) == 0
    compare = ["evaluate", "compare", str(tmp_path / "a" / "per_case.csv"), str(tmp_path / "b" / "per_case.csv"),
               "--out", str(tmp_path / "cmp")]
    capsys.readouterr()
    assert main(compare) == 0
    err = capsys.readouterr().err
    assert "1 case(s) dropped" in err and missing in err
    excluded = pd.read_csv(tmp_path / "cmp" / "comparison_exclusions.csv")
    assert (excluded.loc[excluded["metric"] == "dice", "n_dropped"] == 1).all()
    assert missing in (tmp_path / "cmp" / "comparison.md").read_text()
    assert main(compare) == 2 and "--overwrite" in _error_line(capsys.readouterr().err)
