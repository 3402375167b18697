"""Applying a baseline (:data:`~dentate_research.baselines.BASELINES`) to scans: labels, timing, flags and the
diagnostics table. Shared by ``evaluate baseline`` (:mod:`dentate_research.cli.evaluate`) and the studies that
compare the two-step model with the baseline (T5 external sites, T7 failure modes)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data.io import Volume, load_image, save_like
from ..data.labels import DN_SIDES, SIDE_NAMES
from ..data.manifest import Case


@dataclass
class BaselineOutput:
    """One scan segmented by a baseline: labels (uint8 0 / 1 = left DN / 2 = right DN on the scan's grid), the
    baseline's diagnostics (per-side ``<side>_<name>`` values, ``flags`` list, ...) and the wall time in s."""

    labels: np.ndarray
    diagnostics: dict[str, Any]
    seconds: float

    @property
    def flags(self) -> str:
        """The scan's flags joined by ";" ('' when all is well)."""
        flags = self.diagnostics.get("flags", []) if isinstance(self.diagnostics, dict) else []
        return ";".join(map(str, flags))


def apply_baseline(model: Any, volume: Volume) -> BaselineOutput:
    """Segment a canonical-RAS ``volume`` with a baseline (``segment_with_diagnostics``), timed."""
    t0 = time.perf_counter()
    labels, diagnostics = model.segment_with_diagnostics(volume)
    return BaselineOutput(labels, diagnostics, time.perf_counter() - t0)


def diagnostics_row(case_id: str, diagnostics: dict[str, Any]) -> dict[str, Any]:
    """One row of the diagnostics table: ``case`` and every diagnostic except ``params``, lists ";"-joined."""
    return {"case": case_id, **{k: ";".join(v) if isinstance(v, list) else v
                                for k, v in diagnostics.items() if k != "params"}}


def segment_cases(model: Any, cases: Sequence[Case], seg_dir: Path, desc: str = "baseline"
                  ) -> tuple[dict[str, Path], pd.DataFrame]:
    """Segment every case with ``model``, write ``seg_dir/<case_id>_seg.nii.gz`` (in the orientation of the case's
    image file); returns {case_id: segmentation path} and the diagnostics table (:func:`diagnostics_row`)."""
    predictions: dict[str, Path] = {}
    rows = []
    for case in tqdm(cases, desc=desc):
        image = load_image(case.image)
        output = apply_baseline(model, image)
        predictions[case.case_id] = save_like(output.labels, image, seg_dir / f"{case.case_id}_seg.nii.gz",
                                              is_label=True)
        rows.append(diagnostics_row(case.case_id, output.diagnostics))
    return predictions, pd.DataFrame(rows)


def attach_diagnostics(table: pd.DataFrame, diag_table: pd.DataFrame) -> pd.DataFrame:
    """Add per-side baseline diagnostics (``baseline_<name>``) and case-level ones to the per-case table."""
    sides = [SIDE_NAMES[value] for value in DN_SIDES]
    side_prefixes = tuple(f"{side}_" for side in sides)
    rows = []
    for _, d in diag_table.iterrows():
        for side in sides:
            row = {"case": d["case"], "side": side}
            for key, value in d.items():
                if key.startswith(f"{side}_"):
                    row[f"baseline_{key[len(side) + 1:]}"] = value
                elif not key.startswith(side_prefixes) and key != "case":
                    row["baseline_case_flags" if key == "flags" else f"baseline_{key}"] = value
            rows.append(row)
    return table.merge(pd.DataFrame(rows), on=["case", "side"], how="left")


def baseline_params(model: Any) -> dict[str, Any]:
    """The parameters of a baseline for a report: its ``params`` dataclass, else its ``threshold``."""
    params = getattr(model, "params", None)
    if params is not None and is_dataclass(params) and not isinstance(params, type):
        return asdict(params)
    return {"threshold": getattr(model, "threshold", None)}
