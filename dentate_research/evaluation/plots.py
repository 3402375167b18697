"""Figures from the per-case table: Bland-Altman, automated-vs-manual scatter, Dice per site (PNG)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dentate_research.data.atomic import write_figure_atomic  # noqa: E402
from dentate_research.data.labels import DN_SIDES, SIDE_NAMES  # noqa: E402

from .stats import bland_altman, pearson  # noqa: E402

_SIDE_ORDER = tuple(SIDE_NAMES[side] for side in DN_SIDES)  # 'left', 'right': panel/box order

# one look for every figure, whatever style another library (seaborn through pingouin, a notebook) left behind
HOUSE_STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8,
               "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 10, "axes.facecolor": "white",
               "axes.edgecolor": "0.3", "axes.grid": False, "figure.dpi": 100}


def _house_style(plot: Callable[..., Path]) -> Callable[..., Path]:
    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with plt.rc_context(HOUSE_STYLE):
            return plot(*args, **kwargs)

    return wrapper


def _save(fig, path: Path | str) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the PNG path."""
    fig.tight_layout()
    path = Path(path)
    try:
        write_figure_atomic(fig, path, dpi=110, format=path.suffix.lstrip(".") or "png")  # never a partial PNG
    finally:
        plt.close(fig)
    return path


@_house_style
def bland_altman_plot(df: pd.DataFrame, path: Path | str, pred_col: str = "volume_pred_mm3",
                      ref_col: str = "volume_ref_mm3", title: str = "", unit: str = "mm³") -> Path:
    """One panel per side: difference (pred - ref) vs mean, with bias and 95 % limits of agreement."""
    sides = [s for s in _SIDE_ORDER if s in set(df["side"])] or sorted(set(df["side"]))
    fig, axes = plt.subplots(1, len(sides), figsize=(5 * len(sides), 4), squeeze=False)
    for ax, side in zip(axes[0], sides, strict=True):
        part = df[df["side"] == side]
        a, b = part[pred_col].to_numpy(float), part[ref_col].to_numpy(float)
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
        ba = bland_altman(a, b)
        ax.scatter((a + b) / 2, a - b, s=14, alpha=0.8)
        for y, style in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
            if np.isfinite(y):
                ax.axhline(y, color="k", linestyle=style, linewidth=1)
        ax.set_title(f"{side}: bias {ba['bias']:.3g}, LoA [{ba['loa_low']:.3g}, {ba['loa_high']:.3g}] (n={ba['n']})",
                     fontsize=9)
        ax.set_xlabel(f"mean of methods ({unit})")
        ax.set_ylabel(f"automated - reference ({unit})")
    fig.suptitle(title or f"Bland-Altman: {pred_col} vs {ref_col}")
    return _save(fig, path)


@_house_style
def scatter_plot(df: pd.DataFrame, path: Path | str, pred_col: str = "volume_pred_mm3",
                 ref_col: str = "volume_ref_mm3", title: str = "") -> Path:
    """Automated vs reference values per side with identity line and Pearson r."""
    sides = [s for s in _SIDE_ORDER if s in set(df["side"])] or sorted(set(df["side"]))
    fig, axes = plt.subplots(1, len(sides), figsize=(5 * len(sides), 4.5), squeeze=False)
    for ax, side in zip(axes[0], sides, strict=True):
        part = df[df["side"] == side]
        for site, sp in part.groupby("site") if "site" in part else [("", part)]:
            ax.scatter(sp[ref_col], sp[pred_col], s=14, label=str(site))
        values = pd.concat([part[ref_col], part[pred_col]]).to_numpy(float)
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = values.min(), values.max()
            ax.plot([lo, hi], [lo, hi], "k--", linewidth=1)
        pr = pearson(part[pred_col], part[ref_col])
        ax.set_title(f"{side}: r = {pr['r']:.2f} [{pr['ci95_low']:.2f}, {pr['ci95_high']:.2f}], n={pr['n']}",
                     fontsize=9)
        ax.set_xlabel(ref_col)
        ax.set_ylabel(pred_col)
        if part["site"].nunique() <= 12:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


@_house_style
def dice_by_site_plot(df: pd.DataFrame, path: Path | str, metric: str = "dice", title: str = "") -> Path:
    """Box plot of a metric per site, left and right side by side, one colour per method."""
    sites = sorted(df["site"].astype(str).unique())
    methods = list(dict.fromkeys(df["method"])) if "method" in df else [""]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(sites) * len(methods)), 4))
    width = 0.8 / (2 * len(methods))
    for m_i, method in enumerate(methods):
        for s_i, side in enumerate(_SIDE_ORDER):
            data, pos = [], []
            for k, site in enumerate(sites):
                v = df[(df["site"].astype(str) == site) & (df["side"] == side) & (df["method"] == method)][metric]
                data.append(v.dropna().to_numpy(float))
                pos.append(k + (m_i * 2 + s_i - len(methods) + 0.5) * width)
            bp = ax.boxplot([d if d.size else [np.nan] for d in data], positions=pos, widths=width * 0.9,
                            patch_artist=True, manage_ticks=False)
            colour = plt.cm.tab10((m_i * 2 + s_i) % 10)
            for box in bp["boxes"]:
                box.set_facecolor(colour)
            ax.plot([], [], color=colour, linewidth=6, label=f"{method} {side}".strip())
    ax.set_xticks(range(len(sites)))
    ax.set_xticklabels(sites, rotation=30)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.set_title(title or f"{metric} per site")
    return _save(fig, path)


@_house_style
def learning_curves_plot(metrics_files: dict[str, Path], path: Path | str, title: str = "",
                         key: str = "val_dice_mean") -> Path:
    """Validation ``key`` of several training runs vs iterations (left) and wall time in s (right).

    ``metrics_files``: run label -> that run's metrics.csv (columns iteration, wall_time_s, ``key``). A run
    without ``key`` but with nnU-Net's own per-epoch ``nnunet_pseudo_dice`` (its trainer validates on patches, not
    through our inference path) is drawn dashed with that measure and says so in its label; a run without
    ``wall_time_s`` is left out of the right panel.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, file in metrics_files.items():
        df = pd.read_csv(file)
        if "phase" in df.columns:
            df = df[df["phase"].fillna("") != "final"]
        column, style = key, "o-"
        if key not in df.columns or df[key].notna().sum() == 0:
            if "nnunet_pseudo_dice" not in df.columns:
                continue
            column, style, label = "nnunet_pseudo_dice", "s--", f"{label} (nnU-Net pseudo Dice)"
        df = df[df[column].notna()]
        if df.empty:
            continue
        axes[0].plot(df["iteration"], df[column], style, ms=3, label=label)
        if "wall_time_s" in df.columns and df["wall_time_s"].notna().any():
            axes[1].plot(df["wall_time_s"], df[column], style, ms=3, label=label)
    axes[0].set_xlabel("training iterations")
    axes[1].set_xlabel("wall time (s, training + validation)")
    axes[0].set_ylabel(key)
    low = min((np.min(line.get_ydata()) for ax in axes for line in ax.get_lines() if len(line.get_ydata())),
              default=0.0)
    for ax in axes:
        ax.set_ylim(max(0.0, float(low) - 0.05), 1.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
