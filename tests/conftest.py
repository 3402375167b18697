"""Shared fixtures: one tiny phantom data set per test session (real NIfTI files + manifest + splits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never talk to wandb servers and never start GPU code paths.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("nnUNet_compile", "f")
os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Manifest path of the `tiny` phantom preset (seed 0), generated once per session."""
    from dentate_research.data.phantom import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("tiny_phantoms"), preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_splits(tiny_dataset, tmp_path_factory) -> Path:
    """Split file for the tiny data set: 2 folds, one external site."""
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.splits import make_splits, write_splits

    cases = read_manifest(tiny_dataset)
    sites = sorted({c.site for c in cases})
    splits = make_splits(cases, n_folds=2, test_fraction=0.2, external_sites=sites[-1:], seed=0)
    return write_splits(splits, tmp_path_factory.mktemp("tiny_splits"))
