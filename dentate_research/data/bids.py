"""Build a case manifest from users' own data: a BIDS dataset / QSM-pipeline derivatives, or a plain folder.

Susceptibility maps are found by their BIDS suffix, ``Chimap`` (the BIDS quantitative-MRI suffix for QSM, defined
in ppm: bids-specification ``src/schema/objects/suffixes.yaml``), or by a glob pattern. Walking a dataset root skips
``derivatives/``, ``sourcedata/`` and hidden folders (BIDS keeps pipeline outputs and raw source files there);
``derivatives="qsmxt"`` (``--derivatives qsmxt``) reads the maps of one pipeline instead, from
``<root>/derivatives/qsmxt/`` (QSMxT: ``sub-*/[ses-*/]anat/*_Chimap.nii``). Subject, session and the other
entities come from the BIDS file name (``sub-01_ses-2_acq-x_Chimap.nii.gz``); age, sex, group and site from
``participants.tsv`` (found in the given folder or, for ``derivatives/<pipeline>``, in the dataset root above);
field strength (``MagneticFieldStrength``) from the JSON sidecars by the BIDS inheritance principle
(:func:`sidecar_metadata`: the sidecar next to the map, then those of the session, subject and dataset root
folders whose entities are a subset of the map's; the closest wins).

Manual tracings made in ITK-SNAP or 3D Slicer are attached by a path template (``{sub}``, ``{ses}``, ``{case}``,
``{stem}`` placeholders) and their label values remapped to ours (1 = left DN, 2 = right DN in world RAS) with a
``--label-map`` such as ``3:1,4:2``; a mapping whose left label lies right of its right label in world x is
refused (it would swap every subject's sides).

Units: QSM in ppm has 99.5th-percentile |value| of a few tenths (DN ~0.1-0.2 ppm, veins ~0.5 ppm); a map whose
robust maximum is above :data:`PPM_PLAUSIBLE_MAX` is not in ppm (ppb is 1000x larger; a local field in Hz at
3 T is 128x larger; phase in radians spreads to +/-pi) and the manifest is refused unless ``units`` is given.
"""

from __future__ import annotations

import glob
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .io import NIFTI_SUFFIXES, DataError, load_image, save_nifti
from .laterality import LEFT_DN, RIGHT_DN, check_sides
from .manifest import Case, write_manifest
from .units import UNIT_TO_PPM

QSM_SUFFIX = "Chimap"
# entities that identify one scan; any other entity (rec, desc, space, ...) distinguishes maps OF a scan
SCAN_ENTITIES = ("sub", "ses", "acq", "run")
# folders a walk of a dataset root never enters (BIDS: pipeline outputs, unconverted source data); hidden ones too
SKIPPED_FOLDERS = ("derivatives", "sourcedata")
PPM_PLAUSIBLE_MAX = 1.5  # 99.5th percentile of |value| over non-zero voxels, ppm
UNITS = tuple(unit for unit in UNIT_TO_PPM if unit)  # ('ppm', 'ppb'): what the manifest's units column converts
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


@dataclass
class FoundMap:
    """One susceptibility map and what its path says about it."""

    path: Path
    entities: dict[str, str] = field(default_factory=dict)
    bids: bool = True  # False: plain folder, 'sub' is the folder below root (or the file stem)

    @property
    def stem(self) -> str:
        name = self.path.name
        return next((name[: -len(s)] for s in NIFTI_SUFFIXES if name.endswith(s)), name)

    @property
    def case_id(self) -> str:
        if not self.bids:
            return self.entities["sub"]
        return "_".join(f"{k}-{self.entities[k]}" for k in SCAN_ENTITIES if k in self.entities)


def parse_entities(path: Path) -> dict[str, str]:
    """BIDS key-value entities of a file name (``sub-01_ses-2_Chimap.nii.gz`` -> {sub: 01, ses: 2})."""
    name = path.name
    for s in NIFTI_SUFFIXES:
        if name.endswith(s):
            name = name[: -len(s)]
    out: dict[str, str] = {}
    for part in name.split("_"):
        m = _ENTITY.match(part)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


def _skipped(rel: Path, allowed: set[str]) -> bool:
    """True if a folder of ``rel`` (a path below the walked root) is derivatives/, sourcedata/ or hidden, unless the
    user's pattern names that folder literally (``allowed``)."""
    return any((part in SKIPPED_FOLDERS or part.startswith(".")) and part not in allowed for part in rel.parts[:-1])


def pipelines(root: Path) -> list[str]:
    """Names of the pipeline folders in ``<root>/derivatives/`` (hidden ones excluded; [] without the folder)."""
    folder = Path(root) / "derivatives"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def derivatives_root(root: Path, name: str) -> Path:
    """``<root>/derivatives/<name>``, the dataset of one pipeline (e.g. ``qsmxt``); DataError naming the path and the
    pipelines present when it does not exist."""
    root = Path(root)
    if not name or Path(name).name != name or name in (".", ".."):
        raise DataError(f"--derivatives '{name}': not a folder name; allowed: the name of one folder under "
                        f"{root / 'derivatives'} (e.g. qsmxt)")
    folder = root / "derivatives" / name
    if not folder.is_dir():
        present = pipelines(root)
        raise DataError(f"{folder}: derivatives folder not found; "
                        + (f"available under {root / 'derivatives'}: {present}" if present else
                           f"{root} has no derivatives/ folder (give the BIDS dataset root holding derivatives/)"))
    return folder


def find_maps(root: Path, *, suffix: str = QSM_SUFFIX, pattern: str | None = None,
              derivatives: str | None = None) -> list[FoundMap]:
    """Susceptibility maps under ``root``: ``*_<suffix>.nii[.gz]`` (BIDS) or the glob ``pattern``.

    The walk skips ``derivatives/``, ``sourcedata/`` and hidden folders (a ``pattern`` may still name one of them
    literally); ``derivatives``: search ``<root>/derivatives/<derivatives>/`` instead (:func:`derivatives_root`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if derivatives is not None:
        root = derivatives_root(root, derivatives)
    if pattern:
        allowed = {part for part in Path(pattern).parts if not any(c in part for c in "*?[")}
        paths = [p for p in root.glob(pattern) if p.is_file() and str(p).endswith(NIFTI_SUFFIXES)]
        how = f"pattern '{pattern}'"
    else:
        allowed = set()
        paths = [p for s in NIFTI_SUFFIXES for p in root.rglob(f"*_{suffix}{s}") if p.is_file()]
        how = f"BIDS suffix '_{suffix}' (.nii/.nii.gz)"
    paths = [p for p in paths if not p.is_relative_to(root) or not _skipped(p.relative_to(root), allowed)]
    if not paths:
        hint = "use --suffix or --pattern"
        present = pipelines(root) if derivatives is None else []
        if present:
            hint += f", or read a pipeline's maps with --derivatives NAME (derivatives/ holds {present})"
        raise DataError(f"{root}: no susceptibility map found by {how} (derivatives/, sourcedata/ and hidden folders "
                        f"are skipped); {hint}")
    found = []
    for p in sorted(set(paths)):
        entities = parse_entities(p)
        bids = "sub" in entities
        if not bids:  # plain folder: the first folder below root names the subject, else the file stem
            rel = p.relative_to(root)
            entities["sub"] = rel.parts[0] if len(rel.parts) > 1 else FoundMap(p).stem
        found.append(FoundMap(p, entities, bids))
    by_scan: dict[str, list[Path]] = defaultdict(list)
    for m in found:
        by_scan[m.case_id].append(m.path)
    dupes = {k: v for k, v in by_scan.items() if len(v) > 1}
    if dupes:
        case, paths = next(iter(dupes.items()))
        raise DataError(f"scan {case}: {len(paths)} maps found ({', '.join(str(p) for p in paths)}); "
                        f"{len(dupes)} scan(s) affected. Select one per scan with --pattern (e.g. a rec-/desc- "
                        "entity)")
    return found


def find_participants(root: Path) -> Path | None:
    """``participants.tsv`` in ``root`` or in a BIDS dataset root above it (derivatives/<pipeline>/)."""
    root = Path(root).resolve()
    for folder in (root, *root.parents[:3]):
        candidate = folder / "participants.tsv"
        if candidate.is_file():
            return candidate
    return None


def read_participants(path: Path) -> pd.DataFrame:
    """participants.tsv indexed by subject label without the ``sub-`` prefix."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns:
        raise DataError(f"{path}: no 'participant_id' column (BIDS requires it); found: {list(table.columns)}")
    table["participant_id"] = table["participant_id"].str.replace(r"^sub-", "", regex=True)
    dupes = table["participant_id"][table["participant_id"].duplicated()].tolist()
    if dupes:
        raise DataError(f"{path}: participant_id repeated: {dupes[:5]}")
    return table.set_index("participant_id")


def parse_label_map(text: str) -> dict[int, int]:
    """``'3:1,4:2'`` -> {3: 1, 4: 2}: foreign label value -> ours (1 = left DN, 2 = right DN)."""
    mapping: dict[int, int] = {}
    for item in (t for t in text.split(",") if t.strip()):
        try:
            src, dst = (int(v) for v in item.split(":"))
        except ValueError as exc:
            raise DataError(f"--label-map: '{item}' is not FOREIGN:OURS (e.g. 3:1,4:2)") from exc
        if dst not in (0, LEFT_DN, RIGHT_DN):
            raise DataError(f"--label-map: '{item}' maps to {dst}; allowed targets: 0 (background), "
                            f"{LEFT_DN} (left DN), {RIGHT_DN} (right DN)")
        mapping[src] = dst
    if not mapping:
        raise DataError(f"--label-map: '{text}' holds no FOREIGN:OURS pair")
    return mapping


def remap_label_file(label_path: Path, image_path: Path, mapping: dict[int, int] | None, out_path: Path) -> Path:
    """Check a tracing against its image and write it with our label values; sides checked in world x.

    Raises DataError naming the file for: another grid than the image, a value outside the mapping (or outside
    0/1/2 without a mapping), a left label whose centroid lies right of the right label's.
    """
    img = nib.load(str(label_path))
    raw = np.rint(np.asarray(img.dataobj)).astype(np.int64)
    values = set(np.unique(raw).tolist()) - {0}
    table = mapping if mapping is not None else {LEFT_DN: LEFT_DN, RIGHT_DN: RIGHT_DN}
    unknown = sorted(values - set(table))
    if unknown:
        hint = f"--label-map covers {sorted(table)}" if mapping is not None else \
            "our values are 1 = left DN, 2 = right DN; remap yours with --label-map FOREIGN:OURS,..."
        raise DataError(f"{label_path}: label value(s) {unknown} not mapped; {hint}")
    out = np.zeros(raw.shape, np.uint8)
    for src, dst in table.items():
        out[raw == src] = dst
    image = nib.load(str(image_path))
    if image.shape[:3] != out.shape[:3] or not np.allclose(image.affine, img.affine, atol=1e-3):
        raise DataError(f"{label_path}: not on the grid of its image {image_path} (shape {out.shape} vs "
                        f"{image.shape[:3]}, or a different affine)")
    sides = check_sides(out, img.affine)
    if sides["sides_consistent"] is False:
        raise DataError(f"{label_path}: after the mapping, left DN (label {LEFT_DN}) lies at world x = "
                        f"{sides['left_x_mm']:.1f} mm, right of right DN (label {RIGHT_DN}) at x = "
                        f"{sides['right_x_mm']:.1f} mm (RAS: left is negative x); the mapping contradicts world "
                        "left/right: swap its targets")
    save_nifti(out, img.affine, out_path, is_label=True)
    return out_path


def robust_abs_max(path: Path) -> float:
    """99.5th percentile of |value| over the non-zero finite voxels of an image (its units' scale)."""
    array = load_image(path).array
    values = np.abs(array[(array != 0) & np.isfinite(array)])
    return float(np.percentile(values, 99.5)) if values.size else 0.0


def check_units(path: Path, units: str | None) -> str:
    """The units to record for an image: ``units`` if given, else ppm if the values are plausible for ppm."""
    if units is not None:
        if units not in UNITS:
            raise DataError(f"--units '{units}' is not supported; allowed: {list(UNITS)} (convert Hz to ppm by "
                            "dividing by 42.58 x B0[T]; phase in radians is not a susceptibility map)")
        return units
    scale = robust_abs_max(path)
    if scale > PPM_PLAUSIBLE_MAX:
        guess = "ppb" if scale > 20 else "Hz (local field) or radians (phase)"
        raise DataError(f"{path}: values implausible for ppm (99.5th percentile |value| = {scale:.3g}, ppm maps stay "
                        f"below {PPM_PLAUSIBLE_MAX}); they look like {guess}. Give --units {'/'.join(UNITS)}")
    return "ppm"


def _split_name(name: str) -> tuple[dict[str, str], str] | None:
    """(entities, suffix) of a BIDS file stem (``sub-01_ses-1_Chimap`` -> ({sub: 01, ses: 1}, Chimap)); None when
    the stem is not ``[key-value_]*suffix``."""
    *pairs, suffix = name.split("_")
    entities: dict[str, str] = {}
    for part in pairs:
        m = _ENTITY.match(part)
        if not m or m.group(1) in entities:
            return None
        entities[m.group(1)] = m.group(2)
    return (entities, suffix) if suffix and "-" not in suffix else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: a sidecar must hold a JSON object, found {type(data).__name__}")
    return data


def sidecar_metadata(path: Path, top: Path) -> dict:
    """BIDS sidecar metadata of ``path`` by the inheritance principle: every ``[entities_]<suffix>.json`` in the
    map's folder and its parents up to ``top`` (the dataset root) whose entities are a subset of the map's, merged
    with the closest file winning each key (in one folder, the one with more entities wins). A file that is not
    BIDS-named (no ``sub-`` entity: plain folders) gets only the same-name JSON next to it."""
    path, top = Path(path), Path(top)
    stem = FoundMap(path).stem
    parsed = _split_name(stem)
    if parsed is None or "sub" not in parsed[0]:
        sidecar = path.with_name(stem + ".json")
        return _read_json(sidecar) if sidecar.is_file() else {}
    entities, suffix = parsed
    folders = [path.parent]
    if path.parent.is_relative_to(top):
        folders += [f for f in path.parent.parents if f.is_relative_to(top)]
    merged: dict = {}
    for folder in reversed(folders):  # dataset root first, the map's folder last: closer files override
        applicable = []
        for candidate in folder.glob(f"*{suffix}.json"):
            found = _split_name(candidate.name[: -len(".json")])
            if found and found[1] == suffix and all(entities.get(k) == v for k, v in found[0].items()):
                applicable.append((len(found[0]), candidate.name, candidate))
        for _, _, candidate in sorted(applicable):
            merged.update(_read_json(candidate))
    return merged


def _sidecar_field_strength(path: Path, top: Path) -> str:
    value = sidecar_metadata(path, top).get("MagneticFieldStrength")
    return "" if value is None else str(value)


def _glob(root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` relative to ``root`` (``..`` and absolute patterns allowed)."""
    return sorted(Path(p) for p in glob.glob(str(root / pattern)) if Path(p).is_file())


def _fill(template: str, m: FoundMap) -> str:
    return template.format(sub=m.entities.get("sub", ""), ses=m.entities.get("ses", ""), case=m.case_id,
                           stem=m.stem)


def build_manifest(root: Path | str, out: Path | str, *, suffix: str = QSM_SUFFIX, pattern: str | None = None,
                   labels: str | None = None, label_map: str | None = None, rater: str = "manual",
                   site_column: str = "site", site_entity: str | None = None, site: str | None = None,
                   units: str | None = None, participants: Path | str | None = None,
                   derivatives: str | None = None, overwrite: bool = False) -> Path:
    """Write a manifest TSV for the maps under ``root`` and return its path.

    Args:
        root: BIDS dataset, derivatives folder or plain folder.
        out: manifest path (remapped tracings go to ``<out folder>/labels_<rater>/``).
        suffix, pattern: how maps are found (see :func:`find_maps`).
        labels: tracing path template relative to ``root`` with ``{sub}``, ``{ses}``, ``{case}``, ``{stem}``.
        label_map: ``'3:1,4:2'`` foreign -> our label values.
        rater: label column name (``label_<rater>``).
        site_column / site_entity / site: where the site comes from (participants.tsv column, a file-name entity
            such as ``acq``, or one name for all); the first one available wins in the order site, site_entity,
            site_column.
        units: image units if not ppm (``ppb``); without it, maps implausible for ppm are refused.
        participants: participants.tsv (default: found in the maps' dataset or the dataset root above it).
        derivatives: read the maps from ``<root>/derivatives/<derivatives>/`` (e.g. ``qsmxt``); without it the walk
            of ``root`` skips derivatives/, sourcedata/ and hidden folders.
        overwrite: replace an existing manifest and remapped tracings (refused otherwise).
    """
    root, out = Path(root).resolve(), Path(out).resolve()
    if out.exists() and not overwrite:
        raise DataError(f"{out}: manifest exists; pass overwrite (--overwrite) to replace it")
    maps = find_maps(root, suffix=suffix, pattern=pattern, derivatives=derivatives)
    maps_root = derivatives_root(root, derivatives) if derivatives is not None else root
    part_path = Path(participants) if participants else find_participants(maps_root)
    part = read_participants(part_path) if part_path else None
    mapping = parse_label_map(label_map) if label_map else None
    label_files: dict[str, Path] = {}
    if labels:
        for m in maps:
            hits = _glob(root, _fill(labels, m))
            if len(hits) > 1:
                raise DataError(f"scan {m.case_id}: {len(hits)} tracings match '{_fill(labels, m)}': "
                                f"{[str(h) for h in hits]}")
            if hits:
                label_files[m.case_id] = hits[0]
        wildcard = re.sub(r"\{(sub|ses|case|stem)\}", "*", labels)
        orphans = sorted(set(_glob(root, wildcard)) - set(label_files.values()))
        if orphans:
            raise DataError(f"{len(orphans)} tracing(s) have no image: {[str(p) for p in orphans[:5]]} (template "
                            f"'{labels}'; images found by {'pattern ' + repr(pattern) if pattern else suffix})")
        if not label_files:
            raise DataError(f"no tracing matches the template '{labels}' under {root}")
    cases = []
    for m in maps:
        sub = m.entities["sub"]
        meta: dict[str, object] = {}
        if part is not None:
            if sub not in part.index:
                raise DataError(f"{part_path}: subject '{sub}' (from {m.path}) is not in participant_id")
            meta.update({k: v for k, v in part.loc[sub].items() if k not in ("subject", "site", "image")})
        if site:
            scan_site = site
        elif site_entity:
            if site_entity not in m.entities:
                raise DataError(f"{m.path}: no '{site_entity}-' entity in the file name for --site-entity")
            scan_site = m.entities[site_entity]
        elif part is not None and site_column in part.columns:
            scan_site = str(part.loc[sub, site_column])
        else:
            raise DataError(f"no site for {m.path}: participants.tsv "
                            f"{'has no column ' + repr(site_column) if part is not None else 'not found'}; give "
                            "--site-column COLUMN, --site-entity ENTITY (e.g. acq) or --site NAME")
        meta["units"] = check_units(m.path, units)
        meta.setdefault("field_strength", _sidecar_field_strength(m.path, maps_root))
        zooms = nib.load(str(m.path)).header.get_zooms()[:3]
        meta["voxel_size"] = ",".join(f"{z:g}" for z in zooms)
        meta["source"] = str(m.path.relative_to(root)) if m.path.is_relative_to(root) else str(m.path)
        case_labels = {}
        if m.case_id in label_files:
            target = out.parent / f"labels_{rater}" / f"{m.case_id}_dn.nii.gz"
            if target.exists() and not overwrite:
                raise DataError(f"{target}: remapped tracing exists; pass overwrite (--overwrite) to replace it")
            case_labels[rater] = remap_label_file(label_files[m.case_id], m.path, mapping, target)
        subject = f"sub-{sub}" if m.bids else sub  # BIDS subjects keep their prefix
        cases.append(Case(m.case_id, subject, str(scan_site), m.path, case_labels, None, meta))
    return write_manifest(cases, out)
