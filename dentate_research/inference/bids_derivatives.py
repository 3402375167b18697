"""``segment`` results as a BIDS derivatives dataset, plus one group table ready for statistics.

Layout written into ``BIDS_OUT`` (BIDS derivatives, common principles: ``desc-`` entity, ``dseg`` suffix for a
discrete segmentation whose label table ``*_dseg.tsv`` applies to every file below it by inheritance)::

    dataset_description.json                     DatasetType "derivative", GeneratedBy: dentate_research + model
    desc-dentate_dseg.tsv                         index/name/abbreviation: 0 background, 1 left DN, 2 right DN
    sub-<label>/[ses-<label>/]anat/<entities>_desc-dentate_dseg.nii.gz    on the input's grid (world RAS sides)
    sub-<label>/[ses-<label>/]anat/<entities>_desc-dentate_dseg.json      status, QC status and flags, volumes,
                                                                          mean susceptibility, model, source
    dentate_volumes.tsv                           one row per scan (failed ones too): volume (mm^3) and mean
                                                  susceptibility (ppm) per side, status, qc_status, flags,
                                                  joined with participants.tsv on participant_id

Entities (sub, ses, acq, run) come from the input's BIDS file name; an input without ``sub-`` gets
``sub-<case name without non-alphanumerics>``. Everything is rebuilt from segment's per-case metadata records
on disk, so a resumed or concurrent batch exports the same dataset. Files are written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.atomic import atomic_output, write_csv_atomic, write_json_atomic, write_text_atomic
from ..data.bids import SCAN_ENTITIES, find_participants, parse_entities, read_participants
from ..data.io import DataError
from ..data.laterality import SIDE_NAMES

DSEG_DESC = "dentate"
FINISHED = ("ok", "flagged", "failed")
BIDS_VERSION = "1.10.0"
STAT_COLUMNS = ("volume_mm3", "mean_susceptibility_ppm", "voxels")


def _entities(record: dict[str, Any]) -> dict[str, str]:
    entities = {k: v for k, v in parse_entities(Path(str(record.get("input", "")))).items() if k in SCAN_ENTITIES}
    if "sub" not in entities:
        entities = {"sub": re.sub(r"[^A-Za-z0-9]", "", str(record["case"])) or "unknown"}
    return entities


def _prefix(entities: dict[str, str]) -> str:
    return "_".join(f"{k}-{entities[k]}" for k in SCAN_ENTITIES if k in entities)


def _records(segment_out: Path) -> list[tuple[Path, dict[str, Any]]]:
    records = []
    for meta in sorted(segment_out.glob("*/*_metadata.json")):
        record = json.loads(meta.read_text())
        if record.get("status") in FINISHED:
            records.append((meta.parent, record))
    return records


def export_bids_derivatives(segment_out: Path | str, bids_out: Path | str, *, participants: Path | str | None = None,
                            model_name: str = "") -> Path:
    """Write (or update) the derivatives dataset for every finished case in ``segment_out``; returns the path
    of ``dentate_volumes.tsv``.

    ``participants``: participants.tsv to join (default: found next to the inputs, in a BIDS root above them).
    Raises DataError when two inputs map to the same BIDS entities.
    """
    segment_out, bids_out = Path(segment_out), Path(bids_out)
    from .. import __version__

    records = _records(segment_out)
    seen: dict[str, str] = {}
    rows = []
    for folder, record in records:
        entities = _entities(record)
        prefix = _prefix(entities)
        if prefix in seen:
            raise DataError(f"{record.get('input')} and {seen[prefix]} both map to BIDS entities '{prefix}'; "
                            "rename one input (BIDS file names with sub-/ses-/run- entities)")
        seen[prefix] = str(record.get("input"))
        anat = bids_out / f"sub-{entities['sub']}" / (f"ses-{entities['ses']}" if "ses" in entities else "") / "anat"
        stats = record.get("statistics") or {}
        qc = record.get("qc") or {}
        row: dict[str, Any] = {"participant_id": f"sub-{entities['sub']}", "session": entities.get("ses", ""),
                               "scan": prefix, "input": record.get("input"), "status": record["status"],
                               "qc_status": qc.get("qc_status", "failed" if record["status"] == "failed" else ""),
                               "flags": ";".join(record.get("flags") or []),
                               "failure_reason": record.get("failure_reason", "")}
        for side in SIDE_NAMES.values():
            for stat in STAT_COLUMNS:
                row[f"{side}_{stat}"] = stats.get(f"{side}_{stat}")
        seg = (record.get("outputs") or {}).get("seg")
        if record["status"] != "failed" and seg and (folder / seg).is_file():
            target = anat / f"{prefix}_desc-{DSEG_DESC}_dseg.nii.gz"
            with atomic_output(target) as tmp:
                tmp.write_bytes((folder / seg).read_bytes())
            write_json_atomic(target.with_name(f"{prefix}_desc-{DSEG_DESC}_dseg.json"), {
                "Description": "Dentate nucleus segmentation: 1 = left, 2 = right (subject's sides, world RAS)",
                "Sources": [str(record.get("input"))],
                "Status": record["status"], "QCStatus": row["qc_status"], "QCFlags": record.get("flags") or [],
                "Statistics": stats, "SidesSwapped": record.get("sides_swapped"),
                "Model": _model_summary(record.get("models")), "Created": record.get("created_utc")})
            row["dseg"] = str(target.relative_to(bids_out))
        else:
            row["dseg"] = ""
        rows.append(row)
    bids_out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(bids_out / "dataset_description.json", {
        "Name": "Dentate nucleus segmentation (dentate_research)", "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "dentate_research", "Version": __version__,
                         "Description": f"two-step DN segmentation; model: {model_name or 'see the sidecars'}"}]})
    write_text_atomic(bids_out / f"desc-{DSEG_DESC}_dseg.tsv",
                      "index\tname\tabbreviation\n0\tbackground\tBG\n1\tleft dentate nucleus\tDN_L\n"
                      "2\tright dentate nucleus\tDN_R\n")
    table = pd.DataFrame(rows)
    part_path = Path(participants) if participants else _participants_near(records)
    if part_path is not None and not table.empty:
        part = read_participants(part_path).reset_index()
        part["participant_id"] = "sub-" + part["participant_id"]
        extra = [c for c in part.columns if c not in table.columns or c == "participant_id"]
        table = table.merge(part[extra], on="participant_id", how="left")
    return write_csv_atomic(table, bids_out / "dentate_volumes.tsv", sep="\t")


def _participants_near(records: list[tuple[Path, dict[str, Any]]]) -> Path | None:
    for _, record in records:
        found = find_participants(Path(str(record.get("input", ""))).parent)
        if found is not None:
            return found
    return None


def _model_summary(models: dict[str, Any] | None) -> dict[str, Any]:
    if not models:
        return {}
    out = {k: models[k] for k in ("model_dir", "source", "card_name") if k in models}
    for stage in ("localization", "segmentation"):
        if isinstance(models.get(stage), dict):
            out[f"{stage}_dir"] = models[stage].get("dir")
    return out
