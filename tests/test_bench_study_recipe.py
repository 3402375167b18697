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
