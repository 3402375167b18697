"""The study tables by name: ``reproduce studies=[...]`` names them, :class:`~.runner.StudyRunner` runs them.

Each table function takes the :class:`~.runner.StudyRunner` (data, splits, trained runs, shared inference and
evaluation helpers) and returns the path of the Markdown table it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .architectures import architectures_study
from .cohort import cohort_study
from .external import external_study
from .failure_modes import failure_modes_study
from .loso import loso_study
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


def look_up_study(name: str) -> StudyTable:
    """The table function of study ``name``; ValueError naming the allowed studies if there is none."""
    try:
        return STUDY_TABLES[name]
    except KeyError:
        raise ValueError(f"unknown study '{name}'; allowed: {list(STUDIES)}") from None
