"""The study-recipe benchmark's variant syntax: NAME=OVERRIDE,OVERRIDE with commas inside brackets kept."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_study_recipe import parse_variant  # noqa: E402


def test_variant_overrides_keep_lists_and_dicts_whole():
    assert parse_variant("study=") == ("study", [])
    assert parse_variant("fr=arch.kwargs.channels=[8,16,32],arch.kwargs.strides=[1,2], trainer.max_minutes=5") == (
        "fr", ["arch.kwargs.channels=[8,16,32]", "arch.kwargs.strides=[1,2]", "trainer.max_minutes=5"])
    assert parse_variant("d=+x={a: 1, b: [2,3]},y=1") == ("d", ["+x={a: 1, b: [2,3]}", "y=1"])


@pytest.mark.parametrize("text", ["study", "=trainer.epochs=1"])
def test_a_variant_without_a_name_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=OVERRIDE"):
        parse_variant(text)


def test_data_dir_must_be_the_studys_preset_seed_and_cohort(tmp_path, monkeypatch):
    """--data-dir is linked in only when its dataset_summary.json says the study's preset, seed and subjects per
    site (data.n_subjects_per_site or the preset's own count); otherwise refused, naming both."""
    import json

    from bench_study_recipe import make_runner

    from dentate_research.studies.runner import StudyRunner

    data = tmp_path / "data"
    data.mkdir()
    sites = {f"site{c}": {"n_cases": 10} for c in "ABCDEFGHI"}
    (data / "dataset_summary.json").write_text(json.dumps({"preset": {"name": "hard"}, "seed": 0, "sites": sites}))
    monkeypatch.setattr(StudyRunner, "prepare_data", lambda self: None)

    def args(*overrides):
        return argparse.Namespace(experiment="cpu", work=tmp_path / "work", data_dir=data,
                                  study_override=list(overrides))

    with pytest.raises(SystemExit, match=r"says preset, seed, subjects per site \('hard', 0, \[10, 10"):
        make_runner(args("data.n_subjects_per_site=20"))
    assert not (tmp_path / "work" / "cpu" / "data_hard_seed0_n20").exists()
    runner = make_runner(args())
    link = tmp_path / "work" / "cpu" / "data_hard_seed0"
    assert runner.s.phantom_data_dir == link and link.resolve() == data.resolve()
