"""The study tables by name: ``reproduce studies=[...]`` names them, :class:`~.runner.StudyRunner` runs them.

Each table function takes the :class:`~.runner.StudyRunner` (data, splits, trained runs, shared inference and
evaluation helpers) and returns the path of the Markdown table it wrote. :data:`STUDY_RUNS` says which training
runs ``(stage, arch, fold)`` a study needs, so that the runner can train them (or fan them out) before any table.
Adding a table: a module with its table function (and its runs function if it trains), one entry in each dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .architectures import architectures_study
from .cohort import cohort_study
from .external import external_study
from .failure_modes import failure_modes_study
from .loso import loso_sites, loso_study
from .reliability import reliability_study
from .two_step import two_step_study

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import StudyRunner

StudyTable = Callable[["StudyRunner"], "Path"]

STUDY_TABLES: dict[str, StudyTable] = {
    "cohort": cohort_study,                # T1
    "reliability": reliability_study,      # T2
    "architectures": architectures_study,  # T3
    "two_step": two_step_study,            # T4
    "external": external_study,            # T5
    "loso": loso_study,                    # T6
    "failure_modes": failure_modes_study,  # T7
}
STUDIES = tuple(STUDY_TABLES)

RunKey = tuple[str, str, str]  # (stage, arch, fold)


def _fold0_two_step_runs(runner: StudyRunner) -> list[RunKey]:
    """The fold-0 localizer and the two-step model's segmenter (T4, T5, T7)."""
    return [("localization", runner.s.localizer_arch, "0"), ("segmentation", runner.s.pipeline_arch, "0")]


def _architecture_runs(runner: StudyRunner) -> list[RunKey]:
    """The fold-0 localizer and one segmenter per benchmarked architecture (T3)."""
    return [("localization", runner.s.localizer_arch, "0"),
            *[("segmentation", arch, "0") for arch in runner.s.architectures]]


def _loso_runs(runner: StudyRunner) -> list[RunKey]:
    """A localizer and a segmenter per left-out site (T6)."""
    return [run for site in loso_sites(runner)
            for run in (("localization", runner.s.localizer_arch, f"loso:{site}"),
                        ("segmentation", runner.s.pipeline_arch, f"loso:{site}"))]


STUDY_RUNS: dict[str, Callable[[StudyRunner], list[RunKey]]] = {
    "architectures": _architecture_runs,
    "two_step": _fold0_two_step_runs,
    "external": _fold0_two_step_runs,
    "loso": _loso_runs,
    "failure_modes": _fold0_two_step_runs,
}


def look_up_study(name: str) -> StudyTable:
    """The table function of study ``name``; ValueError naming the allowed studies if there is none."""
    try:
        return STUDY_TABLES[name]
    except KeyError:
        raise ValueError(f"unknown study '{name}'; allowed: {list(STUDIES)}") from None
