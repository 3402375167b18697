"""The committed split files of the synthetic benchmark are what the generator and make-splits produce."""

from __future__ import annotations

import json
from pathlib import Path

from dentate_research.data.manifest import read_manifest
from dentate_research.data.splits import load_split, make_splits

SPLITS = Path(__file__).resolve().parents[1] / "data_splits"


def test_committed_tiny_splits_are_reproducible(tiny_dataset):
    committed = json.loads((SPLITS / "phantom_tiny_seed0" / "splits.json").read_text())
    fresh = make_splits(read_manifest(tiny_dataset), n_folds=committed["n_folds"],
                        test_fraction=committed["test_fraction"], external_sites=committed["external_sites"],
                        seed=committed["seed"])
    for key in ("folds", "internal_test", "external_test", "leave_one_site_out", "subject_of_case"):
        assert fresh[key] == committed[key], key
    assert json.loads((SPLITS / "phantom_tiny_seed0" / "splits_final.json").read_text()) == committed["folds"]


def test_committed_splits_have_no_leakage():
    for path in sorted(SPLITS.glob("*/splits.json")):
        splits = json.loads(path.read_text())
        for fold in [*map(str, range(splits["n_folds"])), *(f"loso:{s}" for s in splits["leave_one_site_out"])]:
            load_split(splits, fold)  # raises on a subject in two parts
        external = set(splits["external_test"])
        for fold in splits["folds"]:
            assert not external & (set(fold["train"]) | set(fold["val"]))
