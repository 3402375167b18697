"""Look at phantom cases: QSM slices through the dentate nuclei with label contours.

Images are read back from disk with the project's loaders (canonical RAS), so the figures also check the
stored orientation and units: ppb images are shown in ppm. Axial and coronal views are in neurological
convention (subject's left on the left of the panel).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import write_figure_atomic  # noqa: E402
from ..io import Volume, load_image, load_label  # noqa: E402
from ..labels import LEFT_DN  # noqa: E402
from ..manifest import Case, read_manifest  # noqa: E402
from ..units import case_image_in_ppm  # noqa: E402

WINDOW_PPM = (-0.08, 0.16)
CONTOUR_COLOURS = {"true": "#ff3b30", "rater1": "#ffd60a", "rater2": "#30d5ff", "rater1_retrace": "#7CFC00",
                   "left": "#ff3b30", "right": "#30d5ff"}


def _extent_mm(volume: Volume, axes: tuple[int, int]) -> list[float]:
    """imshow extent [left, right, bottom, top] in world mm for a slice spanning two array axes."""
    origin = volume.affine[:3, 3]
    spacing = volume.spacing
    a, b = axes
    return [origin[a] - spacing[a] / 2, origin[a] + spacing[a] * (volume.shape[a] - 0.5),
            origin[b] - spacing[b] / 2, origin[b] + spacing[b] * (volume.shape[b] - 0.5)]


def _slice(array: np.ndarray, view: str, index: int) -> np.ndarray:
    """2D panel (rows = second axis) for 'axial' (x,y), 'coronal' (x,z) or 'sagittal' (y,z)."""
    if view == "axial":
        return array[:, :, index].T
    if view == "coronal":
        return array[:, index, :].T
    return array[index, :, :].T


_VIEW_AXES = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}
_VIEW_SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def _draw(ax, volume: Volume, image: np.ndarray, labels: dict[str, np.ndarray], view: str,
          centre_vox: np.ndarray,
          zoom_mm: float | None, centre_mm: np.ndarray, window: tuple[float, float]) -> None:
    index = int(round(centre_vox[_VIEW_SLICE_AXIS[view]]))
    extent = _extent_mm(volume, _VIEW_AXES[view])
    ax.imshow(_slice(image, view, index), cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
              extent=extent, interpolation="nearest")
    # Contours need pixel-centre coordinates in mm.
    a, b = _VIEW_AXES[view]
    xs = volume.affine[a, 3] + volume.spacing[a] * np.arange(volume.shape[a])
    ys = volume.affine[b, 3] + volume.spacing[b] * np.arange(volume.shape[b])
    for name, label in labels.items():
        panel = _slice(label, view, index)
        if panel.any():
            ax.contour(xs, ys, (panel > 0).astype(float), levels=[0.5], colors=CONTOUR_COLOURS.get(name, "m"),
                       linewidths=0.8)
    if zoom_mm:
        ax.set_xlim(centre_mm[a] - zoom_mm, centre_mm[a] + zoom_mm)
        ax.set_ylim(centre_mm[b] - zoom_mm, centre_mm[b] + zoom_mm)
    ax.set_xticks([])
    ax.set_yticks([])


def _dn_centre(volume: Volume, label: np.ndarray, side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    mask = label > 0 if side is None else label == side
    centre_vox = np.argwhere(mask).mean(axis=0)
    centre_mm = volume.affine[:3, :3] @ centre_vox + volume.affine[:3, 3]
    return centre_vox, centre_mm


def save_sites_figure(manifest: Path | str, path: Path | str, case_ids: list[str] | None = None,
                      window_ppm: tuple[float, float] = WINDOW_PPM) -> Path:
    """One row per site (first case, or ``case_ids``): whole-brain axial at the basal-ganglia level (36 mm
    above the DNs: globus pallidus, putamen, veins, streaking) and at the DN level, axial zoom on both DNs,
    coronal and sagittal zooms through the left DN, with the true DN contour (red) and rater1 (yellow).

    Grey window in ppm (ppb images converted), so site gain/offset differences are visible.
    """
    cases = read_manifest(manifest)
    if case_ids is None:
        chosen: dict[str, Case] = {}
        for c in cases:
            chosen.setdefault(c.site, c)
        selected = list(chosen.values())
    else:
        by_id = {c.case_id: c for c in cases}
        missing = [i for i in case_ids if i not in by_id]
        if missing:
            raise ValueError(f"case_ids {missing} not in {manifest}")
        selected = [by_id[i] for i in case_ids]
    fig, axes = plt.subplots(len(selected), 5, figsize=(13.5, 2.7 * len(selected)), squeeze=False)
    for row, case in enumerate(selected):
        volume = load_image(case.image)
        image = case_image_in_ppm(case, volume).array
        labels = {r: load_label(case.labels[r], volume).array for r in ("true", "rater1") if r in case.labels}
        centre_vox, centre_mm = _dn_centre(volume, labels["true"])
        left_vox, left_mm = _dn_centre(volume, labels["true"], side=LEFT_DN)
        basal_vox = centre_vox.copy()
        basal_vox[2] = min(centre_vox[2] + 36.0 / volume.spacing[2], volume.shape[2] - 1)
        _draw(axes[row, 0], volume, image, {}, "axial", basal_vox, None, centre_mm, window_ppm)
        _draw(axes[row, 1], volume, image, {}, "axial", centre_vox, None, centre_mm, window_ppm)
        _draw(axes[row, 2], volume, image, labels, "axial", centre_vox, 32, centre_mm, window_ppm)
        _draw(axes[row, 3], volume, image, labels, "coronal", left_vox, 22, left_mm, window_ppm)
        _draw(axes[row, 4], volume, image, labels, "sagittal", left_vox, 22, left_mm, window_ppm)
        meta = case.meta
        axes[row, 0].set_ylabel(f"{case.site}\n{meta.get('field_strength')} T {meta.get('reconstruction')}\n"
                                f"{meta.get('voxel_size')} mm, {meta.get('units')}", fontsize=8)
        if row == 0:
            for col, title in enumerate(["axial (DN + 36 mm)", "axial (DN level)", "axial zoom",
                                         "coronal (left DN)", "sagittal (left DN)"]):
                axes[row, col].set_title(title, fontsize=9)
    fig.suptitle(f"QSM phantom, window {window_ppm[0]}..{window_ppm[1]} ppm; red: true DN, yellow: rater1; "
                 "neurological view (L on left)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_figure_atomic(fig, path, dpi=85)
    plt.close(fig)
    return path


def save_dn_figure(manifest: Path | str, path: Path | str, case_id: str | None = None,
                   window_ppm: tuple[float, float] = WINDOW_PPM) -> Path:
    """Close-up of one case's DNs (default: the first case of the finest-resolution site).

    Top row: image only (axial, coronal, sagittal through the left DN); bottom row: contours of the true DN
    (red), rater1 (yellow), rater2 (cyan) and the rater1 retrace (green) if present.
    """
    cases = read_manifest(manifest)
    if case_id is None:
        def voxel_volume(c: Case) -> float:
            return float(np.prod([float(v) for v in str(c.meta.get("voxel_size", "9,9,9")).split(",")]))

        case = min(cases, key=voxel_volume)
    else:
        matches = [c for c in cases if c.case_id == case_id]
        if not matches:
            raise ValueError(f"case_id '{case_id}' not in {manifest}")
        case = matches[0]
    volume = load_image(case.image)
    image = case_image_in_ppm(case, volume).array
    labels = {r: load_label(p, volume).array for r, p in case.labels.items()}
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    centre_vox, centre_mm = _dn_centre(volume, labels["true"])
    left_vox, left_mm = _dn_centre(volume, labels["true"], side=LEFT_DN)
    views = [("axial", centre_vox, centre_mm, 30), ("axial", left_vox, left_mm, 16),
             ("coronal", left_vox, left_mm, 16), ("sagittal", left_vox, left_mm, 16)]
    for col, (view, cv, cm, zoom) in enumerate(views):
        _draw(axes[0, col], volume, image, {}, view, cv, zoom, cm, window_ppm)
        _draw(axes[1, col], volume, image, labels, view, cv, zoom, cm, window_ppm)
        axes[0, col].set_title(f"{view}" + (" (both DNs)" if col == 0 else " (left DN)"), fontsize=9)
    meta = case.meta
    fig.suptitle(f"{case.case_id}: {meta.get('group')}, age {meta.get('age')}, "
                 f"{meta.get('field_strength')} T, {meta.get('voxel_size')} mm, "
                 f"{meta.get('reconstruction')}; contours: red true, yellow rater1, cyan rater2, "
                 "green rater1 retrace", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path
