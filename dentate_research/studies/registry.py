"""The studies, one :class:`Study` each: ``reproduce studies=[...]`` names them, the runner runs them.

A study is its name, its table id (``T1`` ...), a one-line title, its table function (takes the
:class:`~.runner.StudyRunner` with the data, splits, trained runs and shared inference and evaluation helpers, and
returns the path of the Markdown table it wrote) and its runs function (the training runs ``(stage, arch, fold)``
it needs, so that the runner can train them, or fan them out, before any table). Each study module registers its
own ``Study`` next to its table function (``register(Study(...))``); :data:`STUDY_MODULES` lists the modules that
are imported to register them. Adding a table: a module with its table function and its ``register`` call, and its
name in :data:`STUDY_MODULES`. Studies run in table order (``T1`` ... ``Tn``); ``all`` stands for every study.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import StudyRunner

RunKey = tuple[str, str, str]  # (stage, arch, fold)

STUDY_MODULES = ("cohort", "reliability", "architectures", "two_step", "external", "loso", "failure_modes")
"""The modules of this package that register a study when imported (in table order, for the reader)."""

ALL = "all"  # in ``studies``: every registered study, in table order

_TABLE_ID = re.compile(r"^T(\d+)$")


def no_runs(runner: StudyRunner) -> list[RunKey]:
    """A study that trains nothing (it reads the data, or the runs of other studies)."""
    return []


def fold0_two_step_runs(runner: StudyRunner) -> list[RunKey]:
    """The fold-0 localizer and the two-step model's segmenter (T4, T5, T7)."""
    return [("localization", runner.s.localizer_arch, "0"), ("segmentation", runner.s.pipeline_arch, "0")]


@dataclass(frozen=True)
class Study:
    """One study table: what ``reproduce studies=[name]`` runs.

    Attributes:
        name: the name in ``reproduce studies=[...]`` (a Python identifier).
        table_id: ``T1``, ``T2``, ...: the table's number, which orders the studies.
        title: one line saying what the table shows.
        table: writes the table from the runner; returns the Markdown path.
        runs: the training runs ``(stage, arch, fold)`` the table uses (default: none).
    """

    name: str
    table_id: str
    title: str
    table: Callable[[StudyRunner], Path]
    runs: Callable[[StudyRunner], list[RunKey]] = field(default=no_runs)

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name == ALL:
            raise ValueError(f"study name {self.name!r}: a Python identifier other than {ALL!r}")
        if not _TABLE_ID.match(self.table_id):
            raise ValueError(f"study {self.name!r}: table_id {self.table_id!r} is not T<number>")
        if "\n" in self.title or not self.title.strip():
            raise ValueError(f"study {self.name!r}: the title is one non-empty line")

    @property
    def number(self) -> int:
        """The table number (``T3`` -> 3)."""
        return int(self.table_id[1:])


_REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    """Add ``study`` (returned, to keep as a module constant); a name or table id already taken is an error."""
    for other in _REGISTRY.values():
        if other.name == study.name or other.table_id == study.table_id:
            raise ValueError(f"study {study.name!r} ({study.table_id}): {other.name!r} ({other.table_id}) is "
                             "registered with the same name or table id")
    _REGISTRY[study.name] = study
    return study


def unregister(name: str) -> Study:
    """Remove a registered study (for tests and plug-ins); returns it."""
    return _REGISTRY.pop(name)


def registered_studies() -> tuple[Study, ...]:
    """Every registered study in table order (the modules of :data:`STUDY_MODULES` are imported first)."""
    for module in STUDY_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return tuple(sorted(_REGISTRY.values(), key=lambda s: s.number))


def study_names() -> list[str]:
    """The names of every registered study, in table order: what ``studies=[all]`` runs."""
    return [s.name for s in registered_studies()]


def look_up_study(name: str) -> Study:
    """The study called ``name``; ValueError naming the allowed studies if there is none."""
    studies = {s.name: s for s in registered_studies()}
    try:
        return studies[name]
    except KeyError:
        raise ValueError(f"unknown study '{name}'; allowed: {', '.join(studies)}") from None


def expand_studies(names: Iterable[str]) -> list[str]:
    """``studies`` of a reproduce config as study names: ``all`` becomes every registered study in table order (in
    its place), repeats are dropped. An unknown name is a one-line :class:`~dentate_research.schema.SettingsError`
    naming the allowed ones."""
    from ..schema import SettingsError

    names, known = list(names), study_names()
    unknown = [n for n in names if n != ALL and n not in known]
    if unknown:
        raise SettingsError(f"studies={names} is not allowed: unknown studies {unknown}; allowed: {ALL} (every "
                            f"study) or any of {', '.join(known)}")
    expanded: list[str] = []
    for name in names:
        expanded += [n for n in (known if name == ALL else [name]) if n not in expanded]
    return expanded
