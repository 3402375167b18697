"""Metric logging: a local CSV + JSON-lines log always, Weights & Biases optionally (offline by default).

wandb never needs a login here: ``mode: offline`` writes a local run folder (sync later with ``wandb sync``),
``mode: disabled`` (or ``logger=none``) skips it entirely. ``online`` is allowed but fails fast without a key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.atomic import write_csv_atomic
from ..schema import WandbMode

WANDB_MODES = WandbMode.words()


class RunLogger:
    """Append one row of metrics per epoch to ``metrics.csv`` and ``metrics.jsonl`` (and wandb if enabled)."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None, *, wandb_enabled: bool = False,
                 wandb_mode: str = "offline", project: str = "dentate_research", run_name: str | None = None,
                 tags: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []
        self.csv_path = self.run_dir / "metrics.csv"
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self._wandb_run = None
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode '{wandb_mode}' unknown; allowed: {list(WANDB_MODES)}")
        if wandb_enabled and wandb_mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self._wandb_run = wandb.init(project=project, name=run_name, dir=str(self.run_dir), mode=wandb_mode,
                                         config=config or {}, tags=tags or [], reinit="finish_previous")

    def load_existing(self) -> list[dict[str, Any]]:
        """Rows already logged in this run directory (for resume)."""
        if self.jsonl_path.exists():
            self.rows = [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip()]
        return self.rows

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.rows.append(clean)
        with self.jsonl_path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
        write_csv_atomic(pd.DataFrame(self.rows), self.csv_path)
        if self._wandb_run is not None:
            step = clean.get("iteration")
            self._wandb_run.log({k: v for k, v in clean.items() if isinstance(v, (int, float)) and v is not None},
                                step=int(step) if step is not None else None)

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb_run is not None:
            self._wandb_run.summary.update({k: v for k, v in values.items() if isinstance(v, (int, float, str))})

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
