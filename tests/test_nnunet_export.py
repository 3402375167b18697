"""Export of a manifest to the nnU-Net raw layout, checked by nnU-Net's own dataset verification."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dentate_research.cli.main import main as cli_main
from dentate_research.data.io import DataError, load_image, load_label
from dentate_research.data.manifest import read_manifest
from dentate_research.data.nnunet_export import dataset_folder_name, export_nnunet

VERIFY = """
import os, sys
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
verify_dataset_integrity(sys.argv[1], num_processes=1)
print("VERIFIED")
"""


def test_export_layout_and_nnunet_verification(tiny_dataset, tmp_path):
    cases = read_manifest(tiny_dataset)
    train_ids = [c.case_id for c in cases[:-2]]
    raw = tmp_path / "raw"
    folder = export_nnunet(tiny_dataset, raw, 501, "Dentate", "true", train_ids, progress=False)
    assert folder == raw / "Dataset501_Dentate"
    spec = json.loads((folder / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "QSM"}
    assert spec["labels"] == {"background": 0, "left_DN": 1, "right_DN": 2}
    assert spec["numTraining"] == len(train_ids) and spec["file_ending"] == ".nii.gz"
    listed = {sub: sorted(p.name for p in (folder / sub).iterdir()) for sub in ("labelsTr", "imagesTs")}
    assert listed["labelsTr"] == sorted(f"{i}.nii.gz" for i in train_ids)
    assert listed["imagesTs"] == sorted(f"{c.case_id}_0000.nii.gz" for c in cases[-2:])
    # ppb sites are converted to ppm; labels keep their world sides.
    ppb_case = next(c for c in cases if c.meta["units"] == "ppb" and c.case_id in train_ids)
    exported = load_image(folder / "imagesTr" / f"{ppb_case.case_id}_0000.nii.gz")
    assert np.allclose(exported.array, load_image(ppb_case.image).array / 1000.0, atol=1e-6)
    label = load_label(folder / "labelsTr" / f"{ppb_case.case_id}.nii.gz", exported)
    assert np.array_equal(label.array, load_label(ppb_case.label("true"), load_image(ppb_case.image)).array)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    result = subprocess.run([sys.executable, "-c", VERIFY, str(folder)], env=env, capture_output=True,
                            text=True, timeout=300)
    log = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 0 and "VERIFIED" in result.stdout, log


def test_export_errors_and_cli(tiny_dataset, tmp_path, capsys):
    with pytest.raises(DataError, match="rater 'rater1_retrace' has no label"):
        export_nnunet(tiny_dataset, tmp_path / "a", rater="rater1_retrace", progress=False)
    with pytest.raises(DataError, match="not in the manifest"):
        export_nnunet(tiny_dataset, tmp_path / "a", train_case_ids=["nobody"], progress=False)
    with pytest.raises(ValueError, match="1..999"):
        dataset_folder_name(1000, "Dentate")
    cases = read_manifest(tiny_dataset)
    cases_file = tmp_path / "train.txt"
    cases_file.write_text("\n".join(c.case_id for c in cases[:3]) + "\n")
    args = ["export-nnunet", "--manifest", str(tiny_dataset), "--out", str(tmp_path / "raw"),
            "--dataset-id", "502", "--name", "DentateR1", "--rater", "rater1",
            "--cases-file", str(cases_file)]
    assert cli_main(args) == 0
    folder = tmp_path / "raw" / "Dataset502_DentateR1"
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3
    assert len(list((folder / "imagesTs").iterdir())) == len(cases) - 3
    assert cli_main(args) == 2  # existing dataset, no --overwrite
    assert "exists and is not empty" in capsys.readouterr().err
