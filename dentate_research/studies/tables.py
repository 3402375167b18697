"""Writing study tables (Markdown + CSV) with the provenance that made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.atomic import write_csv_atomic, write_text_atomic


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def dataframe_to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (no tabulate dependency needed at call sites)."""
    if df.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(v, digits).replace("|", "/") for v in row.tolist()) + " |")
    return "\n".join(lines) + "\n"


def provenance_block(provenance: dict[str, Any]) -> str:
    """Short Markdown paragraph: command, study preset, data, git SHA, date."""
    git = provenance.get("git", {})
    sha = git.get("sha") or "no commit"
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    return (f"_Made by `{provenance.get('command', '?')}` (study preset `{provenance.get('study', '?')}`, data: "
            f"{provenance.get('data', '?')}) at git {sha}{dirty}, {provenance.get('finished_utc', '')}._\n")


def write_table(df: pd.DataFrame, out_dir: Path, name: str, title: str, provenance: dict[str, Any],
                notes: str = "", digits: int = 3) -> Path:
    """Write ``name.csv`` and ``name.md`` (title, provenance, table, notes) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(df, out_dir / f"{name}.csv")
    text = f"# {title}\n\n{provenance_block(provenance)}\n{dataframe_to_markdown(df, digits)}"
    if notes:
        text += f"\n{notes.strip()}\n"
    path = write_text_atomic(out_dir / f"{name}.md", text)
    return path


def write_json(data: Any, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")
