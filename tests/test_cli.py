"""The command line: every verb is listed and answers --help; unknown verbs fail clearly; the code is ruff-clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dentate_research.cli.main import VERBS

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dentate_research", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_top_level_help_lists_every_verb():
    result = _run("--help")
    assert result.returncode == 0
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", [v for v, (_, _, hydra) in VERBS.items() if not hydra])
def test_each_argparse_verb_has_help(verb):
    result = _run(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_unknown_verb():
    result = _run("fly")
    assert result.returncode == 2
    assert "unknown verb 'fly'" in result.stderr and "segment" in result.stderr


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "dentate_research", "tests", "benchmarks", "notebooks"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
