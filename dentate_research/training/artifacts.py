"""What a training run writes besides the weights: ``run_info.json`` (versions, git SHA, timings) and the
training curve. Loading a trained stage is :mod:`dentate_research.runtime.stage_model`.

A run directory written by :func:`dentate_research.training.train_stage` holds::

    config.yaml            resolved configuration of the run
    run_info.json          versions, git SHA, seed, device, timings
    model.json             the ModelCard (everything inference needs besides the weights)
    metrics.csv / .jsonl   one row per epoch (train loss, lr, validation metrics)
    training_curve.png
    train.log              the package's messages during the run
    checkpoints/best.pt, checkpoints/final.pt, checkpoints/last.pt   (MONAI networks)
    nnunet/                nnU-Net raw/preprocessed/results folders (nnU-Net runs)
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.atomic import write_figure_atomic, write_text_atomic
from ..model_contract import json_default
from ..provenance import TRAINING_PACKAGES, package_versions

RESULTS_DIR = "experiments"  # committed study tables: results, not code (git_sha ignores their changes)

__all__ = ["RESULTS_DIR", "git_sha", "plot_training_curve", "versions", "write_run_info"]


def git_sha(repo_dir: Path | None = None, exclude: Sequence[Path] = ()) -> dict[str, Any]:
    """Git commit of the code (None when not a repository or no commit yet) and whether the tree is dirty.

    ``exclude``: folders whose changes do not make the tree dirty (a study's own output folder inside the
    repository: the tables it is about to rewrite are not a change to the code that makes them). The repository's
    results folder (:data:`RESULTS_DIR`, ``experiments/``) is always excluded: a run trained while a study rewrites
    its tables was still made by committed code."""
    repo_dir = (repo_dir or Path(__file__).resolve().parents[2]).resolve()
    resolved = [Path(p).resolve() for p in (repo_dir / RESULTS_DIR, *exclude)]
    inside = [p for p in resolved if p.is_relative_to(repo_dir)]
    pathspec = ["--", "."] + [f":(exclude){p.relative_to(repo_dir).as_posix()}" for p in inside] if inside else []
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                             timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", *pathspec], cwd=repo_dir, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip() if sha.returncode == 0 else None,
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the main training libraries (``not installed`` if absent)."""
    return package_versions(TRAINING_PACKAGES, missing="not installed", with_platform=True)  # type: ignore[return-value]


def write_run_info(run_dir: Path, *, seed: int, device: str, timings: dict[str, float],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``run_info.json`` (versions, git SHA, seed, device, timings in s)."""
    info = {"seed": seed, "device": device, "timings_s": timings, "versions": versions(), "git": git_sha(),
            "host": platform.node(), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    info.update(extra or {})
    path = Path(run_dir) / "run_info.json"
    write_text_atomic(path, json.dumps(info, indent=1, default=json_default) + "\n")
    return path


def plot_training_curve(rows: list[dict[str, Any]], path: Path | str, title: str = "") -> Path | None:
    """Training loss and validation metrics per epoch as a PNG (None when there are no rows)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [r["epoch"] for r in rows]
    if any(r.get("train_loss") is not None for r in rows):
        ax.plot(epochs, [r.get("train_loss", np.nan) for r in rows], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    for key, color in (("val_dice_left", "tab:red"), ("val_dice_right", "tab:green"),
                       ("val_dice_cerebellum", "tab:purple"), ("val_bbox_recall", "tab:orange")):
        vals = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        if vals:
            ax2.plot(*zip(*vals, strict=True), "o-", color=color, label=key)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("validation")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    if handles:
        ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    write_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)
