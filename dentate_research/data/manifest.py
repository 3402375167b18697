"""The case manifest: one row per scan, the contract between data generation, training and evaluation.

A manifest is a TSV file. Paths in it are relative to the manifest's folder (or absolute). Columns:

=================  ===========================================================================
subject            subject ID (unique per person; splits are made on it)
site               acquisition site / dataset name
group              healthy | FRDA (Friedreich ataxia) | MS | other
age                years
sex                F | M
field_strength     Tesla
voxel_size         "x,y,z" in mm
reconstruction     QSM algorithm (TKD, iLSQR, MEDI, ...)
image              path of the QSM image
label_<rater>      path of the DN label map traced by <rater> (1 = left, 2 = right); at least one
label_true         optional: the ground-truth DN (phantoms only)
cerebellum         optional: cerebellum mask (for the localization stage)
=================  ===========================================================================

Extra columns are kept. Users' own data need only ``subject``, ``site`` and ``image`` (plus a label column
for training or evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .atomic import write_csv_atomic
from .io import DataError

REQUIRED_COLUMNS = ("subject", "site", "image")
LABEL_PREFIX = "label_"


@dataclass
class Case:
    """One scan with its labels. Paths are absolute."""

    case_id: str
    subject: str
    site: str
    image: Path
    labels: dict[str, Path] = field(default_factory=dict)
    cerebellum: Path | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def label(self, rater: str) -> Path:
        """Path of a rater's label map ('true' for phantom ground truth)."""
        if rater not in self.labels:
            raise DataError(f"case {self.case_id}: no label for rater '{rater}'; available: "
                            f"{sorted(self.labels) or 'none'}")
        return self.labels[rater]


def read_manifest(path: Path | str) -> list[Case]:
    """Read a TSV/CSV manifest into Cases, checking columns, unique case IDs and that files exist."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)}, "
                        f"found: {list(table.columns)}")
    if "case_id" not in table.columns:
        table["case_id"] = table["subject"]
    dupes = table["case_id"][table["case_id"].duplicated()].tolist()
    if dupes:
        raise DataError(f"{path}: duplicate case_id values {dupes[:5]}; each scan needs a unique case_id")
    root = path.parent
    cases = []
    for _, row in table.iterrows():
        def resolve(p: str) -> Path:
            q = Path(p)
            return q if q.is_absolute() else (root / q).resolve()

        labels = {c[len(LABEL_PREFIX):]: resolve(row[c]) for c in table.columns
                  if c.startswith(LABEL_PREFIX) and row[c]}
        image = resolve(row["image"])
        if not image.exists():
            raise DataError(f"{path}: case {row['case_id']}: image file {image} not found")
        known = {"case_id", "subject", "site", "image", "cerebellum"}
        meta = {c: row[c] for c in table.columns if c not in known and not c.startswith(LABEL_PREFIX)}
        cases.append(Case(row["case_id"], row["subject"], row["site"], image, labels,
                          resolve(row["cerebellum"]) if row.get("cerebellum") else None, meta))
    return cases


def write_manifest(cases: list[Case], path: Path | str) -> Path:
    """Write Cases as a TSV manifest with paths relative to its folder."""
    path = Path(path)
    root = path.parent.resolve()

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        try:
            return str(Path(p).resolve().relative_to(root))
        except ValueError:
            return str(p)

    rows = []
    for c in cases:
        row: dict[str, object] = {"case_id": c.case_id, "subject": c.subject, "site": c.site}
        row.update(c.meta)
        row["image"] = rel(c.image)
        for rater, p in sorted(c.labels.items()):
            row[LABEL_PREFIX + rater] = rel(p)
        row["cerebellum"] = rel(c.cerebellum)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(rows), path, sep="\t")
    return path


def cases_by_id(cases: list[Case]) -> dict[str, Case]:
    return {c.case_id: c for c in cases}
