"""T1: the cohort table (per site: n, groups, age, sex, field strength, voxel size, reconstruction, role)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..data.manifest import Case
from .registry import Study, register
from .tables import write_table

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import StudyRunner


def case_roles(splits: dict) -> dict[str, str]:
    """Role of each case in a split file: development (train/val folds), internal_test or external_test."""
    roles = {}
    for fold in splits["folds"]:
        for cid in fold["train"] + fold["val"]:
            roles[cid] = "development"
    roles.update({cid: "internal_test" for cid in splits["internal_test"]})
    roles.update({cid: "external_test" for cid in splits["external_test"]})
    return roles


def cohort_table(cases: Sequence[Case], splits: dict | None = None) -> pd.DataFrame:
    """One row per site plus a total row. Columns follow the paper's cohort table."""
    roles = case_roles(splits) if splits else {}
    rows = []
    table = pd.DataFrame([{"site": c.site, "subject": c.subject, "case": c.case_id, **c.meta,
                           "role": roles.get(c.case_id, "")} for c in cases])

    def describe(part: pd.DataFrame, site: str) -> dict[str, object]:
        age = pd.to_numeric(part.get("age", pd.Series(dtype=float)), errors="coerce")
        groups = part.get("group", pd.Series(dtype=str)).value_counts()
        sex = part.get("sex", pd.Series(dtype=str)).value_counts()
        role_counts = part["role"].value_counts()
        first = part.iloc[0]
        return {
            "site": site,
            "n_subjects": part["subject"].nunique(),
            "n_scans": len(part),
            "groups": ", ".join(f"{g} {n}" for g, n in groups.items()),
            "age_mean_sd": f"{age.mean():.1f} +/- {age.std(ddof=1):.1f}" if age.notna().sum() > 1 else
            (f"{age.mean():.1f}" if age.notna().any() else "n/a"),
            "age_range": f"{age.min():.0f}-{age.max():.0f}" if age.notna().any() else "n/a",
            "female": int(sex.get("F", 0)),
            "field_T": ", ".join(sorted({str(v) for v in part.get("field_strength", [])})) if site != "all" else "",
            "voxel_mm": str(first.get("voxel_size", "")) if site != "all" else "",
            "reconstruction": str(first.get("reconstruction", "")) if site != "all" else "",
            "role": ", ".join(f"{r} {n}" for r, n in role_counts.items() if r) or "n/a",
        }

    for site, part in table.groupby("site", sort=True):
        rows.append(describe(part, str(site)))
    rows.append(describe(table, "all"))
    out = pd.DataFrame(rows)
    out["female"] = out["female"].astype(np.int64)
    return out


def cohort_study(runner: StudyRunner) -> Path:
    """Write ``T1_cohort.{md,csv}`` for the study's cases and splits; returns the Markdown path."""
    df = cohort_table(runner.cases, runner.splits)
    return write_table(df, runner.s.out_dir, "T1_cohort", "T1 Cohort (per site)", runner.stamp(),
                       "Role counts are scans: development = cross-validation folds, internal_test = held-out "
                       "subjects of development sites, external_test = whole external sites.")


STUDY = register(Study(
    name="cohort", table_id="T1", table=cohort_study,
    title="Cohort: per site n, groups, age, sex, field strength, voxel size, reconstruction, role"))
