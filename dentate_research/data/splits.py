"""Seeded, subject-level data splits.

One split file (JSON) describes everything a study needs:

- ``folds``: K train/validation folds over the *development* subjects, in nnU-Net's ``splits_final.json``
  style (a list of ``{"train": [...], "val": [...]}`` of case IDs),
- ``internal_test``: held-out subjects from the development sites,
- ``external_test``: every case of the external sites (never used for training, planning or normalization),
- ``leave_one_site_out``: for each site, train/val on the other development sites, test on that site.

All parts are made of whole subjects (all scans of a subject fall in the same part) and folds are stratified
by site. An unknown fold is an error, never a silent random split.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import SplitSettings
from .atomic import write_text_atomic
from .io import DataError
from .manifest import Case

SPLIT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Split:
    """Case IDs of one train/validation/test partition."""

    name: str
    train: list[str]
    val: list[str]
    test: list[str]

    def check_disjoint(self, subject_of: dict[str, str] | None = None) -> None:
        """Raise DataError if a case or (given ``subject_of``) a subject appears in two parts."""
        parts = {"train": self.train, "val": self.val, "test": self.test}
        for key, mapping in (("case", None), ("subject", subject_of)):
            if key == "subject" and mapping is None:
                continue
            seen: dict[str, str] = {}
            for part, ids in parts.items():
                for cid in ids:
                    unit = cid if mapping is None else mapping[cid]
                    if unit in seen and seen[unit] != part:
                        raise DataError(f"split '{self.name}': {key} {unit} is in both {seen[unit]} and {part}")
                    seen[unit] = part


def _group_by_subject(cases: list[Case]) -> dict[str, list[str]]:
    subjects: dict[str, list[str]] = defaultdict(list)
    for c in cases:
        subjects[c.subject].append(c.case_id)
    return subjects


def _subject_site(cases: list[Case]) -> dict[str, str]:
    site_of: dict[str, str] = {}
    for c in cases:
        if site_of.setdefault(c.subject, c.site) != c.site:
            raise DataError(f"subject {c.subject} appears at two sites ({site_of[c.subject]}, {c.site}); "
                            "give the scans distinct subject IDs or one site")
    return site_of


def make_splits(cases: list[Case], *, n_folds: int = SplitSettings.n_folds,
                test_fraction: float = SplitSettings.test_fraction,
                external_sites: list[str] | tuple[str, ...] = (), seed: int = 0) -> dict:
    """Build the split dictionary (see module docstring) from manifest cases.

    Args:
        cases: all cases of the study.
        n_folds: number of cross-validation folds over development subjects (>= 2).
        test_fraction: fraction of each development site's subjects held out as internal test (0 <= f < 1).
        external_sites: sites held out entirely (external test).
        seed: RNG seed; the same inputs and seed give the same splits.
    """
    if n_folds < 2:
        raise DataError(f"n_folds must be >= 2, got {n_folds}")
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    sites = sorted({c.site for c in cases})
    unknown = sorted(set(external_sites) - set(sites))
    if unknown:
        raise DataError(f"external site(s) {unknown} not in the manifest; sites: {sites}")
    rng = np.random.default_rng(seed)
    subjects = _group_by_subject(cases)
    site_of = _subject_site(cases)
    by_site: dict[str, list[str]] = defaultdict(list)
    for subj in sorted(subjects):
        by_site[site_of[subj]].append(subj)

    dev_sites = [s for s in sites if s not in external_sites]
    if not dev_sites:
        raise DataError("every site is external: no development data left for training")
    internal_test: list[str] = []
    fold_subjects: list[list[str]] = [[] for _ in range(n_folds)]
    offset = 0
    for site in dev_sites:
        subj = list(by_site[site])
        rng.shuffle(subj)
        n_test = int(round(test_fraction * len(subj)))
        if test_fraction > 0 and len(subj) >= 3:
            n_test = max(n_test, 1)
        internal_test += subj[:n_test]
        for i, s in enumerate(subj[n_test:]):  # round-robin keeps sites balanced across folds
            fold_subjects[(i + offset) % n_folds].append(s)
        offset += len(subj) - n_test

    def cases_of(subject_list: list[str]) -> list[str]:
        return sorted(cid for s in subject_list for cid in subjects[s])

    folds = []
    for k in range(n_folds):
        val = cases_of(fold_subjects[k])
        train = cases_of([s for j in range(n_folds) if j != k for s in fold_subjects[j]])
        if not train or not val:
            raise DataError(f"fold {k} would have an empty train or validation set: too few development "
                            f"subjects ({sum(len(f) for f in fold_subjects)}) for {n_folds} folds")
        folds.append({"train": train, "val": val})

    loso = {}
    for site in sites:
        others = [s for s in sites if s != site and s not in external_sites]
        pool = [subj for s in others for subj in by_site[s]]
        rng_site = np.random.default_rng([seed, sites.index(site)])
        pool = list(rng_site.permutation(pool))
        n_val = max(1, int(round(len(pool) / n_folds))) if len(pool) > 1 else 0
        loso[site] = {"train": cases_of(pool[n_val:]), "val": cases_of(pool[:n_val]),
                      "test": cases_of(by_site[site])}

    external = cases_of([s for site in external_sites for s in by_site[site]])
    return {
        "format_version": SPLIT_FORMAT_VERSION,
        "seed": seed,
        "n_folds": n_folds,
        "test_fraction": test_fraction,
        "sites": sites,
        "development_sites": dev_sites,
        "external_sites": list(external_sites),
        "subject_of_case": {c.case_id: c.subject for c in cases},
        "folds": folds,
        "internal_test": cases_of(internal_test),
        "external_test": external,
        "leave_one_site_out": loso,
    }


def write_splits(splits: dict, out_dir: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``splits.json`` plus nnU-Net-style ``splits_final.json`` and test lists into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {
        "splits.json": splits,
        "splits_final.json": splits["folds"],
        "test_internal.txt": splits["internal_test"],
        "test_external.txt": splits["external_test"],
    }
    existing = [name for name in targets if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: {existing} exist; pass --overwrite to replace them")
    for name, content in targets.items():
        path = out_dir / name
        if name.endswith(".json"):
            write_text_atomic(path, json.dumps(content, indent=1) + "\n")
        else:
            write_text_atomic(path, "".join(f"{cid}\n" for cid in content))
    return out_dir / "splits.json"


def read_splits(path: Path | str) -> dict:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: split file not found (make one with 'python -m dentate_research make-splits')")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "folds" not in data:
        raise DataError(f"{path}: not a dentate_research split file (expected keys 'folds', 'internal_test', ...)")
    return data


def available_folds(splits: dict) -> list[str]:
    """Fold names accepted by :func:`load_split`."""
    names = [str(k) for k in range(len(splits["folds"]))] + ["all"]
    names += [f"loso:{site}" for site in splits.get("leave_one_site_out", {})]
    return names


def load_split(path_or_splits: Path | str | dict, fold: int | str) -> Split:
    """Select one partition.

    ``fold`` is a fold index (``0..K-1``), ``"all"`` (train on every development case; validation = fold 0's
    validation cases are *also* in train, so use only for final models) or ``"loso:<site>"``. The test part is
    the internal test set for folds and the left-out site for LOSO.
    """
    splits = path_or_splits if isinstance(path_or_splits, dict) else read_splits(path_or_splits)
    name = str(fold)
    subject_of = splits.get("subject_of_case")
    if name.isdigit() and int(name) < len(splits["folds"]):
        f = splits["folds"][int(name)]
        split = Split(f"fold{name}", list(f["train"]), list(f["val"]), list(splits["internal_test"]))
    elif name == "all":
        f0 = splits["folds"][0]
        # train and val overlap by design: for final models, validation is only a sanity check
        return Split("all", sorted(set(f0["train"]) | set(f0["val"])), list(f0["val"]),
                     list(splits["internal_test"]))
    elif name.startswith("loso:") and name[5:] in splits.get("leave_one_site_out", {}):
        f = splits["leave_one_site_out"][name[5:]]
        split = Split(name, list(f["train"]), list(f["val"]), list(f["test"]))
    else:
        raise DataError(f"unknown fold '{fold}'; available: {available_folds(splits)}")
    split.check_disjoint(subject_of)
    return split
