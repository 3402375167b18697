"""make-manifest: BIDS datasets (sessions, participants.tsv, foreign tracing values, ppb maps) -> case manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dentate_research.cli.main import main
from dentate_research.data.bids import build_manifest, find_maps, parse_entities, sidecar_metadata
from dentate_research.data.io import DataError, load_label, save_nifti
from dentate_research.data.laterality import check_sides
from dentate_research.data.manifest import read_manifest
from tests.synthetic_dn import make_scan

FOREIGN = {1: 3, 2: 4}  # our value -> the value the (simulated) ITK-SNAP tracing uses


def _scan(seed: int):
    image, labels, _, affine = make_scan(seed, spacing=(3.0, 3.0, 3.0))
    return image, labels, affine


def make_bids(root: Path, *, ppb_subjects: tuple[str, ...] = (), extra_map: bool = False,
              orphan_label: bool = False, site_column: bool = True, bad_value: bool = False) -> Path:
    """sub-01 (ses-1, ses-2), sub-02 (ses-1) under root/, tracings in root/derivatives/manual with values 3/4."""
    rows = []
    seed = 0
    for sub, sessions, site, age in (("01", ("1", "2"), "clinicA", "34"), ("02", ("1",), "clinicB", "12")):
        rows.append({"participant_id": f"sub-{sub}", "age": age, "sex": "F", "group": "healthy",
                     **({"site": site} if site_column else {})})
        for ses in sessions:
            seed += 1
            image, labels, affine = _scan(seed)
            if sub in ppb_subjects:
                image = image * 1000.0
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            save_nifti(image, affine, anat / f"sub-{sub}_ses-{ses}_Chimap.nii.gz")
            (anat / f"sub-{sub}_ses-{ses}_Chimap.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
            if extra_map:
                save_nifti(image, affine, anat / f"sub-{sub}_ses-{ses}_rec-iLSQR_Chimap.nii.gz")
            foreign = np.zeros_like(labels)
            for ours, theirs in FOREIGN.items():
                foreign[labels == ours] = theirs
            if bad_value:
                foreign[0, 0, 0] = 5
            tracing = root / "derivatives" / "manual" / f"sub-{sub}" / f"ses-{ses}"
            save_nifti(foreign, affine, tracing / f"sub-{sub}_ses-{ses}_desc-dentate_dseg.nii.gz", is_label=True)
    if orphan_label:
        image, labels, affine = _scan(99)
        save_nifti(labels, affine, root / "derivatives" / "manual" / "sub-03" / "ses-1"
                   / "sub-03_ses-1_desc-dentate_dseg.nii.gz", is_label=True)
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


LABELS = "derivatives/manual/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}_desc-dentate_dseg.nii.gz"


def test_bids_to_manifest_with_sessions_participants_and_remapped_tracings(tmp_path):
    root = make_bids(tmp_path / "bids")
    out = build_manifest(root, tmp_path / "m" / "manifest.tsv", labels=LABELS, label_map="3:1,4:2")
    cases = read_manifest(out)
    assert [c.case_id for c in cases] == ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1"]
    assert [c.subject for c in cases] == ["sub-01", "sub-01", "sub-02"]
    assert [c.site for c in cases] == ["clinicA", "clinicA", "clinicB"]
    assert cases[2].meta["age"] == "12" and cases[0].meta["units"] == "ppm"
    assert cases[0].meta["field_strength"] == "3" and cases[0].meta["voxel_size"] == "3,3,3"
    for c in cases:
        labels = load_label(c.label("manual"))  # only 0/1/2 pass load_label
        sides = check_sides(labels.array, labels.affine)
        assert sides["sides_consistent"] is True and sides["left_x_mm"] < 0 < sides["right_x_mm"]


def test_cli_writes_manifest_and_refuses_to_overwrite(tmp_path, capsys):
    root = make_bids(tmp_path / "bids")
    out = tmp_path / "manifest.tsv"
    args = ["make-manifest", str(root), "-o", str(out), "--labels", LABELS, "--label-map", "3:1,4:2"]
    assert main(args) == 0
    assert "3 scans, 2 subjects" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


def test_ppb_maps_are_refused_without_units_and_recorded_with_them(tmp_path):
    root = make_bids(tmp_path / "bids", ppb_subjects=("02",))
    with pytest.raises(DataError, match=r"sub-02_ses-1_Chimap.nii.gz: values implausible for ppm.*ppb"):
        build_manifest(root, tmp_path / "a.tsv")
    # all maps in ppb: --units ppb records it (evaluation converts to ppm through the units column)
    out = build_manifest(make_bids(tmp_path / "all_ppb", ppb_subjects=("01", "02")), tmp_path / "c.tsv",
                         units="ppb")
    assert {c.meta["units"] for c in read_manifest(out)} == {"ppb"}


def test_mapping_that_swaps_world_sides_is_refused(tmp_path):
    root = make_bids(tmp_path / "bids")
    with pytest.raises(DataError, match="contradicts world left/right"):
        build_manifest(root, tmp_path / "m.tsv", labels=LABELS, label_map="3:2,4:1")


@pytest.mark.parametrize("problem, kwargs, message", [
    ("unknown label value", {"bad_value": True}, r"label value\(s\) \[5\] not mapped"),
    ("two maps for one scan", {"extra_map": True}, r"scan sub-01_ses-1: 2 maps found"),
    ("label file without its image", {"orphan_label": True}, r"1 tracing\(s\) have no image: .*sub-03"),
    ("participants.tsv without the site column", {"site_column": False}, r"has no column 'site'.*--site-entity"),
])
def test_malformed_inputs_give_clear_errors(tmp_path, problem, kwargs, message):
    root = make_bids(tmp_path / "bids", **kwargs)
    with pytest.raises(DataError, match=message):
        build_manifest(root, tmp_path / "m.tsv", labels=LABELS, label_map="3:1,4:2")
    assert not (tmp_path / "m.tsv").exists(), problem


def test_foreign_values_without_label_map_are_refused(tmp_path):
    root = make_bids(tmp_path / "bids")
    with pytest.raises(DataError, match=r"\[3, 4\] not mapped.*--label-map"):
        build_manifest(root, tmp_path / "m.tsv", labels=LABELS)


def test_plain_folder_with_pattern_and_one_site(tmp_path):
    for i, name in enumerate(("patientA", "patientB")):
        image, _, affine = _scan(i)
        save_nifti(image, affine, tmp_path / "scans" / name / "qsm.nii.gz")
    out = build_manifest(tmp_path / "scans", tmp_path / "m.tsv", pattern="*/qsm.nii.gz", site="clinicC")
    cases = read_manifest(out)
    assert [(c.case_id, c.subject, c.site) for c in cases] == [("patientA", "patientA", "clinicC"),
                                                                ("patientB", "patientB", "clinicC")]


def test_parse_entities():
    assert parse_entities(Path("sub-01_ses-2_acq-fast_run-1_Chimap.nii.gz")) == {
        "sub": "01", "ses": "2", "acq": "fast", "run": "1"}



# ------------------------------------------------------------------ derivatives/, sourcedata/, sidecar inheritance

def make_qsmxt_dataset(root: Path) -> Path:
    """A raw BIDS root with sub-01's own Chimap, QSMxT's derivative of it (uncompressed, as QSMxT writes it) and
    copies under sourcedata/ and a hidden folder that discovery must never pick up."""
    image, _, affine = _scan(1)
    save_nifti(image, affine, root / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
    save_nifti(image, affine, root / "derivatives" / "qsmxt" / "sub-01" / "anat" / "sub-01_Chimap.nii")
    save_nifti(image, affine, root / "sourcedata" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
    save_nifti(image, affine, root / ".cache" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    pd.DataFrame({"participant_id": ["sub-01"], "site": ["clinicA"]}).to_csv(root / "participants.tsv", sep="\t",
                                                                               index=False)
    return root


def test_qsmxt_layout_raw_maps_by_default_derivative_maps_with_the_option(tmp_path, capsys):
    root = make_qsmxt_dataset(tmp_path / "bids")
    assert [m.path for m in find_maps(root)] == [root / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"]
    derived = root / "derivatives" / "qsmxt" / "sub-01" / "anat" / "sub-01_Chimap.nii"
    assert [m.path for m in find_maps(root, derivatives="qsmxt")] == [derived]
    # the manifest of the derivative maps keeps participants.tsv of the dataset root above
    out = tmp_path / "m.tsv"
    assert main(["make-manifest", str(root), "--derivatives", "qsmxt", "-o", str(out)]) == 0
    (case,) = read_manifest(out)
    assert case.image == derived and case.case_id == "sub-01" and case.site == "clinicA"
    assert case.meta["source"] == "derivatives/qsmxt/sub-01/anat/sub-01_Chimap.nii"
    capsys.readouterr()
    # an absent pipeline folder: one line naming the path and the pipelines present
    assert main(["make-manifest", str(root), "--derivatives", "qsmxt-2024", "-o", str(tmp_path / "n.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root / "derivatives" / "qsmxt-2024") in err and "['qsmxt']" in err
    assert not (tmp_path / "n.tsv").exists()
    with pytest.raises(DataError, match=r"has no derivatives/ folder"):
        find_maps(root / "sub-01", derivatives="qsmxt")
    with pytest.raises(DataError, match=r"--derivatives '\.\./x': not a folder name"):
        find_maps(root, derivatives="../x")


def test_maps_only_under_derivatives_point_to_the_option(tmp_path):
    root = make_qsmxt_dataset(tmp_path / "bids")
    (root / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").unlink()
    with pytest.raises(DataError, match=r"no susceptibility map.*--derivatives NAME \(derivatives/ holds \['qsmxt'\]"):
        find_maps(root)


def test_pattern_may_name_a_skipped_folder_literally(tmp_path):
    root = make_qsmxt_dataset(tmp_path / "bids")
    assert [m.path.name for m in find_maps(root, pattern="**/*_Chimap.nii*")] == ["sub-01_Chimap.nii.gz"]
    found = find_maps(root, pattern="derivatives/qsmxt/sub-*/anat/*_Chimap.nii")
    assert [m.path for m in found] == [root / "derivatives" / "qsmxt" / "sub-01" / "anat" / "sub-01_Chimap.nii"]


def test_segment_reads_a_pipelines_derivatives(tmp_path, capsys):
    from dentate_research.inference.batch import collect_inputs

    root = make_qsmxt_dataset(tmp_path / "bids")
    assert collect_inputs([root]) == [root / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"]
    assert collect_inputs([root], derivatives="qsmxt") == [
        root / "derivatives" / "qsmxt" / "sub-01" / "anat" / "sub-01_Chimap.nii"]
    out = tmp_path / "seg"
    assert main(["segment", "-i", str(root), "-o", str(out), "--derivatives", "nope"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'derivatives' / 'nope'}: derivatives folder not found" in err and "['qsmxt']" in err
    assert not out.exists()


def test_sidecar_inheritance_for_field_strength(tmp_path):
    """Root-level Chimap.json applies to every map; a subject- or file-level sidecar overrides it (closest wins);
    a sidecar with an entity the map lacks does not apply; a derivatives dataset has its own hierarchy."""
    root = tmp_path / "bids"
    scans = {("01", "1"): None, ("02", "1"): None, ("02", "2"): 1.5}
    for i, ((sub, ses), own) in enumerate(scans.items()):
        image, _, affine = _scan(i + 1)
        anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
        save_nifti(image, affine, anat / f"sub-{sub}_ses-{ses}_Chimap.nii.gz")
        if own is not None:
            (anat / f"sub-{sub}_ses-{ses}_Chimap.json").write_text(json.dumps({"MagneticFieldStrength": own}))
    (root / "Chimap.json").write_text(json.dumps({"MagneticFieldStrength": 7, "EchoTime": 0.02}))
    (root / "sub-01_acq-x_Chimap.json").write_text(json.dumps({"MagneticFieldStrength": 9}))  # acq-x: not these
    (root / "T1w.json").write_text(json.dumps({"MagneticFieldStrength": 11}))  # another suffix
    (root / "sub-02" / "sub-02_Chimap.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "site": ["A", "B"]}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    cases = read_manifest(build_manifest(root, tmp_path / "m.tsv"))
    assert {c.case_id: c.meta["field_strength"] for c in cases} == {
        "sub-01_ses-1": "7", "sub-02_ses-1": "3", "sub-02_ses-2": "1.5"}
    own = root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_Chimap.nii.gz"
    assert sidecar_metadata(own, root) == {"MagneticFieldStrength": 1.5, "EchoTime": 0.02}
    # derivatives/qsmxt is its own dataset: its root Chimap.json applies to its maps, the raw root's does not
    image, _, affine = _scan(9)
    qsmxt = root / "derivatives" / "qsmxt"
    save_nifti(image, affine, qsmxt / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_Chimap.nii")
    assert read_manifest(build_manifest(root, tmp_path / "d1.tsv", derivatives="qsmxt"))[0].meta[
        "field_strength"] == ""
    (qsmxt / "Chimap.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
    assert read_manifest(build_manifest(root, tmp_path / "d2.tsv", derivatives="qsmxt"))[0].meta[
        "field_strength"] == "3"
    (qsmxt / "Chimap.json").write_text("{not json")
    with pytest.raises(DataError, match=r"Chimap.json: not valid JSON"):
        build_manifest(root, tmp_path / "d3.tsv", derivatives="qsmxt")

# ------------------------------------------------------------------ BIDS derivatives out

def _fake_segment_output(out: Path, image: Path, status: str, labels: np.ndarray, affine: np.ndarray) -> None:
    """What `segment` leaves for one input: OUT/X/X_seg.nii.gz and OUT/X/X_metadata.json."""
    name = image.name.replace(".nii.gz", "")
    folder = out / name
    outputs = {"metadata": f"{name}_metadata.json"}
    if status != "failed":
        save_nifti(labels, affine, folder / f"{name}_seg.nii.gz", is_label=True)
        outputs["seg"] = f"{name}_seg.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"case": name, "input": str(image), "status": status, "flags": [] if status == "ok" else ["x"],
              "statistics": {"left_volume_mm3": 900.0, "right_volume_mm3": 850.0,
                             "left_mean_susceptibility_ppm": 0.1, "right_mean_susceptibility_ppm": 0.11},
              "qc": {"qc_status": "pass"} if status == "ok" else {}, "outputs": outputs,
              "models": {"source": "shipped", "card_name": "default"}}
    if status == "failed":
        record["failure_reason"] = "no_cerebellum"
    (folder / outputs["metadata"]).write_text(json.dumps(record))


def test_bids_derivatives_dataset_and_group_table(tmp_path):
    from dentate_research.inference.bids_derivatives import export_bids_derivatives

    root = make_bids(tmp_path / "bids")
    seg_out = tmp_path / "segment"
    images = sorted(root.rglob("*_Chimap.nii.gz"))
    for image, status in zip(images, ("ok", "flagged", "failed"), strict=True):
        _, labels, affine = _scan(1)
        _fake_segment_output(seg_out, image, status, labels, affine)
    table_path = export_bids_derivatives(seg_out, tmp_path / "deriv")
    deriv = tmp_path / "deriv"
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "dentate_research"
    assert (deriv / "desc-dentate_dseg.tsv").read_text().splitlines()[2] == "1\tleft dentate nucleus\tDN_L"
    dseg = deriv / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-dentate_dseg.nii.gz"
    assert dseg.exists() and json.loads(dseg.with_name("sub-01_ses-1_desc-dentate_dseg.json").read_text())[
        "QCStatus"] == "pass"
    assert not list((deriv / "sub-02").rglob("*.nii.gz"))  # the failed scan has no dseg, only a table row
    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    assert table["scan"].tolist() == ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1"]
    assert table["status"].tolist() == ["ok", "flagged", "failed"]
    assert table["age"].tolist() == ["34", "34", "12"] and table["site"].tolist() == ["clinicA", "clinicA", "clinicB"]
    assert table.loc[2, "failure_reason"] == "no_cerebellum" and table.loc[0, "left_volume_mm3"] == "900.0"


def test_segment_bids_dataset_to_bids_derivatives(tmp_path_factory, tmp_path, capsys):
    """`segment -i BIDS_ROOT --bids-out DIR`: the Chimap maps of every session are segmented (and nothing else in
    the tree), the derivatives hold one dseg per scan and the group table carries participants.tsv's columns."""
    from inference_helpers import toy_scan, trained_toy_model

    model = trained_toy_model(tmp_path_factory.mktemp("bids_model"))
    root = tmp_path / "bids"
    for i, (sub, ses) in enumerate((("01", "1"), ("01", "2"), ("02", "1"))):
        image, labels, _, affine = toy_scan(200 + i)
        anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
        save_nifti(image, affine, anat / f"sub-{sub}_ses-{ses}_Chimap.nii.gz")
        save_nifti(image, affine, anat / f"sub-{sub}_ses-{ses}_T1w.nii.gz")  # not a QSM map: must be ignored
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "age": [30, 12], "site": ["A", "B"]}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    deriv = tmp_path / "deriv"
    code = main(["segment", "-i", str(root), "-o", str(tmp_path / "seg"), "--model", str(model),
                 "--bids-out", str(deriv), "--no-overlay"])
    assert code in (0, 4), capsys.readouterr().err
    table = pd.read_csv(deriv / "dentate_volumes.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table["scan"].tolist() == ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1"]
    assert table["age"].tolist() == ["30", "30", "12"] and set(table["status"]) <= {"ok", "flagged"}
    for scan, sub, ses in (("sub-01_ses-2", "01", "2"), ("sub-02_ses-1", "02", "1")):
        dseg = deriv / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"{scan}_desc-dentate_dseg.nii.gz"
        labels = load_label(dseg)
        assert check_sides(labels.array, labels.affine)["sides_consistent"] is True
    assert not (tmp_path / "seg" / "sub-01_ses-1_T1w").exists()
