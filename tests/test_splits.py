"""Subject-level splits: no leakage, deterministic, unknown folds are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dentate_research.data.io import DataError
from dentate_research.data.manifest import Case, read_manifest, write_manifest
from dentate_research.data.splits import load_split, make_splits, read_splits, write_splits


def _cases(n_sites: int = 4, n_subjects: int = 6, scans_per_subject: int = 2) -> list[Case]:
    cases = []
    for s in range(n_sites):
        for j in range(n_subjects):
            for k in range(scans_per_subject):
                subject = f"site{s}_sub{j:02d}"
                cases.append(Case(f"{subject}_scan{k}", subject, f"site{s}", Path(f"/nonexistent/{subject}_{k}")))
    return cases


def test_parts_are_subject_disjoint_and_complete():
    cases = _cases()
    splits = make_splits(cases, n_folds=3, test_fraction=0.2, external_sites=["site3"], seed=1)
    subject_of = splits["subject_of_case"]
    all_ids = {c.case_id for c in cases}
    for k in range(3):
        split = load_split(splits, k)
        subj = {p: {subject_of[c] for c in getattr(split, p)} for p in ("train", "val", "test")}
        assert not subj["train"] & subj["val"] and not subj["train"] & subj["test"] and not subj["val"] & subj["test"]
        assert not {subject_of[c] for c in splits["external_test"]} & (subj["train"] | subj["val"] | subj["test"])
        assert set(split.train) | set(split.val) | set(split.test) | set(splits["external_test"]) == all_ids
    # every development subject is validated exactly once across folds
    val_subjects = [subject_of[c] for k in range(3) for c in splits["folds"][k]["val"]]
    assert len(val_subjects) == len(set(val_subjects)) * 2  # two scans per subject, once per fold
    assert all(subject_of[c].startswith("site3") for c in splits["external_test"])


def test_leave_one_site_out_never_trains_on_left_out_or_external_site():
    cases = _cases()
    splits = make_splits(cases, n_folds=3, external_sites=["site3"], seed=0)
    site_of = {c.case_id: c.site for c in cases}
    for site in ("site0", "site1", "site2", "site3"):
        split = load_split(splits, f"loso:{site}")
        assert {site_of[c] for c in split.test} == {site}
        assert site not in {site_of[c] for c in split.train + split.val}
        assert "site3" not in {site_of[c] for c in split.train + split.val}


def test_deterministic_and_seed_dependent():
    cases = _cases()
    a, b = make_splits(cases, seed=3), make_splits(cases, seed=3)
    c = make_splits(cases, seed=4)
    assert a == b
    assert a["folds"] != c["folds"] or a["internal_test"] != c["internal_test"]


def test_unknown_fold_is_an_error_not_a_random_split():
    splits = make_splits(_cases(), n_folds=3)
    with pytest.raises(DataError, match=r"unknown fold '7'; available: \['0', '1', '2', 'all'"):
        load_split(splits, 7)
    with pytest.raises(DataError, match="unknown fold 'loso:nowhere'"):
        load_split(splits, "loso:nowhere")


def test_bad_parameters():
    with pytest.raises(DataError, match="external site"):
        make_splits(_cases(), external_sites=["mars"])
    with pytest.raises(DataError, match="n_folds"):
        make_splits(_cases(), n_folds=1)
    with pytest.raises(DataError, match="too few development subjects"):
        make_splits(_cases(n_sites=1, n_subjects=2), n_folds=5, test_fraction=0.0)


def test_leakage_in_a_hand_edited_file_is_caught(tmp_path):
    splits = make_splits(_cases(), n_folds=3)
    leaked = splits["folds"][0]["val"][0]
    splits["folds"][0]["train"].append(leaked)
    path = write_splits(splits, tmp_path)
    with pytest.raises(DataError, match="is in both train and val"):
        load_split(path, 0)


def test_files_and_cli_from_manifest(tmp_path):
    # a real manifest with real files
    for c in (cases := _cases(n_sites=3, n_subjects=4, scans_per_subject=1)):
        c.image = tmp_path / f"{c.case_id}.nii.gz"
        c.image.write_bytes(b"x")
    manifest = write_manifest(cases, tmp_path / "manifest.tsv")
    assert [c.case_id for c in read_manifest(manifest)] == [c.case_id for c in cases]
    from dentate_research.cli.main import main

    out = tmp_path / "splits"
    assert main(["make-splits", "--manifest", str(manifest), "--out", str(out), "--folds", "2",
                 "--external-sites", "site2"]) == 0
    nnunet_style = json.loads((out / "splits_final.json").read_text())
    assert isinstance(nnunet_style, list) and set(nnunet_style[0]) == {"train", "val"}
    assert read_splits(out / "splits.json")["external_sites"] == ["site2"]
    # a second run refuses to overwrite
    assert main(["make-splits", "--manifest", str(manifest), "--out", str(out), "--folds", "2"]) == 2
