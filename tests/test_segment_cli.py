"""``python -m dentate_research segment``: outputs, batch mode, exit codes and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from inference_helpers import toy_scan, trained_toy_model

from dentate_research.cli.main import main
from dentate_research.data.io import save_nifti
from dentate_research.data.laterality import RIGHT_DN
from dentate_research.inference.default_model import default_model_dir, install_model


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """The tiny two-step model of inference_helpers (trained once per process, shared with test_inference)."""
    return trained_toy_model(tmp_path_factory.mktemp("inference_model"))


@pytest.fixture()
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, name in enumerate(("a.nii.gz", "b.nii")):
        image, _, _, affine = toy_scan(40 + i)
        save_nifti(image, affine, folder / name)
    return folder


def segment(*args: object) -> int:
    return main(["segment", *[str(a) for a in args]])


def test_single_input_writes_outputs_and_exit_0(toy_model, scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment("-i", scans / "a.nii.gz", "-o", out, "--model", toy_model, "--no-overlay") == 0
    assert "a/a_seg.nii.gz" in capsys.readouterr().out
    assert (out / "a" / "a_seg.nii.gz").exists() and not (out / "a" / "a_overlay.png").exists()
    assert json.loads((out / "a" / "a_metadata.json").read_text())["status"] == "ok"


def test_folder_batch_accumulates_volumes_csv(toy_model, scans, tmp_path):
    out = tmp_path / "out"
    assert segment("-i", scans, "-o", out, "--localizer", toy_model / "localization",
                   "--segmenter", toy_model / "segmentation") == 0
    table = pd.read_csv(out / "volumes.csv")
    assert sorted(table["case"]) == ["a", "b"]
    assert (table["left_volume_mm3"] > 0).all() and (table["right_volume_mm3"] > 0).all()
    assert all((out / name / f"{name}_overlay.png").exists() for name in ("a", "b"))


def test_existing_outputs_need_overwrite(toy_model, scans, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("-i", scans / "a.nii.gz", "-o", out, "--model", toy_model, "--no-overlay")
    assert segment(*args) == 0
    capsys.readouterr()
    assert segment(*args) == 2
    err = capsys.readouterr().err
    assert "a_seg.nii.gz" in err and "--overwrite" in err and "Traceback" not in err
    assert segment(*args, "--overwrite") == 0


def test_bad_inputs_exit_2_with_clean_message(toy_model, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("hello")
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, 2), np.float32), np.eye(4)), four_d)
    cases = [(tmp_path / "missing.nii.gz", "file not found"), (bad, "bad.nii.gz"), (four_d, "expected a 3D volume"),
             (tmp_path / "scan.txt", "file not found")]
    (tmp_path / "notes.txt").write_text("x")
    cases.append((tmp_path / "notes.txt", "unsupported file type"))
    for path, message in cases:
        assert segment("-i", path, "-o", tmp_path / "out", "--model", toy_model) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_model_options_are_checked(toy_model, scans, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DENTATE_RESEARCH_MODEL", raising=False)
    monkeypatch.setattr("dentate_research.inference.default_model.packaged_model_dir", lambda: tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert segment("-i", scans, "-o", tmp_path / "out") == 2
    assert "python -m dentate_research demo" in capsys.readouterr().err
    assert segment("-i", scans, "-o", tmp_path / "out", "--localizer", toy_model / "localization") == 2
    assert "together" in capsys.readouterr().err
    assert segment("-i", scans, "-o", tmp_path / "out", "--model", tmp_path) == 2
    assert "not a two-step model folder" in capsys.readouterr().err
    # a model installed in the user cache becomes the default; $DENTATE_RESEARCH_MODEL takes precedence
    installed = install_model(toy_model, tmp_path / "cache" / "dentate_research" / "default_model")
    assert default_model_dir() == installed and not (installed / "segmentation" / "checkpoints" / "last.pt").exists()
    assert segment("-i", scans / "a.nii.gz", "-o", tmp_path / "out", "--no-overlay") == 0
    monkeypatch.setenv("DENTATE_RESEARCH_MODEL", str(toy_model))
    assert default_model_dir() == toy_model


def test_failed_and_flagged_inputs_set_exit_codes(toy_model, tmp_path, capsys):
    folder = tmp_path / "scans"
    save_nifti(np.zeros((48, 56, 44), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]), folder / "blank.nii.gz")
    image, labels, _, affine = toy_scan(50)
    image[labels == RIGHT_DN] = 0.06
    save_nifti(image, affine, folder / "one_side.nii.gz")
    out = tmp_path / "out"
    assert segment("-i", folder / "one_side.nii.gz", "-o", out, "--model", toy_model, "--no-overlay") == 4
    assert "FLAG" in capsys.readouterr().err
    assert segment("-i", folder, "-o", tmp_path / "out2", "--model", toy_model, "--no-overlay") == 3
    err = capsys.readouterr().err
    assert "FAILED" in err and "localizer_empty" in err
    assert not (tmp_path / "out2" / "blank" / "blank_seg.nii.gz").exists()
    table = pd.read_csv(tmp_path / "out2" / "volumes.csv").set_index("case")
    assert table.loc["blank", "status"] == "failed" and table.loc["one_side", "status"] == "flagged"


def test_python_dash_m_entry_point(toy_model, scans, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "dentate_research", "segment", "-i", str(scans / "b.nii"), "-o",
                           str(tmp_path / "out"), "--model", str(toy_model)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "b" / "b_seg.nii.gz").exists()


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        segment("--help")
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert all(text in help_text for text in ("exit 2", "exit 3", "exit 4", "--overwrite", "X_seg.nii.gz"))


def test_the_batch_api_does_what_the_cli_does_without_it(toy_model, scans, tmp_path, capsys):
    """inference.batch: collect_inputs -> select_model -> segment_batch, with resume, from Python (nothing printed)."""
    from dentate_research.data.io import DataError
    from dentate_research.inference.batch import collect_inputs, segment_batch, select_model

    inputs = collect_inputs([scans])
    assert [p.name for p in inputs] == ["a.nii.gz", "b.nii"]
    model = select_model(model=toy_model)
    assert model.source == "--model" and model.localizer == toy_model / "localization"
    with pytest.raises(DataError, match="not both"):
        select_model(model=toy_model, localizer=toy_model / "localization", segmenter=toy_model / "segmentation")
    predictor = model.predictor()
    seen = []
    out = tmp_path / "out"
    result = segment_batch(predictor, inputs[:1], out, on_case=seen.append, progress=False)
    assert [o.status for o in result.outcomes] == ["ok"] and seen == result.outcomes
    assert result.report_paths == [out / "report.html"] and not result.errors
    resumed = segment_batch(predictor, inputs, out, resume=True, progress=False)
    assert resumed.counts() == {"ok": 1, "flagged": 0, "failed": 0, "bad_input": 0, "skipped": 1}
    assert sorted(pd.read_csv(out / "volumes.csv")["case"]) == ["a", "b"]
    assert capsys.readouterr().out == ""  # the library prints nothing; the CLI prints the outcomes
