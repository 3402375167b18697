"""A seconds-fast toy data set for tests and benchmarks of the training code (not a realistic phantom).

Each case: a head ellipsoid (QSM-like values in ppm, 0 outside), a cerebellum mask, and two bright crenellated
DN blobs at world x < 0 (label 1, left) and x > 0 (label 2, right). The left blob is slightly larger, so a
left-right mirror without label swap is detectable. Some cases are stored in LAS orientation on disk to
exercise reorientation. For realistic data use :mod:`dentate_research.data.phantom`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.io import save_nifti
from ..data.manifest import Case, write_manifest


def _ras_affine(shape: Sequence[int], spacing: float) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2.0  # world origin at the volume centre
    return affine


def make_toy_case(shape: Sequence[int] = (56, 48, 40), spacing: float = 2.0,
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (image ppm, DN labels 0/1/2, cerebellum mask 0/1, RAS affine) for one toy case."""
    rng = rng or np.random.default_rng(0)
    affine = _ras_affine(shape, spacing)
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    world = (idx @ affine[:3, :3].T + affine[:3, 3]).T.reshape(3, *shape)
    x, y, z = world
    shift = rng.uniform(-3, 3, size=3)
    head = ((x / 52) ** 2 + (y / 45) ** 2 + (z / 38) ** 2) <= 1
    cx, cy, cz = 0 + shift[0], -18 + shift[1], -12 + shift[2]
    cerebellum = (((x - cx) / 36) ** 2 + ((y - cy) / 18) ** 2 + ((z - cz) / 14) ** 2) <= 1
    labels = np.zeros(shape, dtype=np.uint8)
    for side, sign, radius in ((1, -1, 8.0), (2, 1, 6.5)):
        dx, dy, dz = x - (cx + sign * 14), y - (cy - 2), z - (cz - 1)
        r = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
        theta = np.arctan2(dy, dx)
        crenellated = radius * (1 + 0.2 * np.sin(6 * theta))
        labels[(r <= crenellated) & cerebellum] = side
    image = np.where(head, 0.01, 0.0) + np.where(cerebellum, -0.01, 0.0) + np.where(labels > 0, 0.14, 0.0)
    image = image + head * rng.normal(0, 0.01, size=shape)
    return image.astype(np.float32), labels, cerebellum.astype(np.uint8), affine


def make_toy_dataset(out_dir: Path | str, n_cases: int = 6, shape: Sequence[int] = (56, 48, 40),
                     spacing: float = 2.0, seed: int = 0, las_every: int = 3) -> Path:
    """Write ``n_cases`` toy cases (one subject each, two sites) and ``manifest.tsv``; returns the manifest path.

    Every ``las_every``-th case is stored left-right flipped on disk (LAS affine, same world content).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        image, labels, cerebellum, affine = make_toy_case(shape, spacing, rng)
        if las_every and i % las_every == las_every - 1:  # store as LAS: flip axis 0, negate its direction
            flip = np.eye(4)
            flip[0, 0], flip[0, 3] = -1, shape[0] - 1
            affine = affine @ flip
            image, labels, cerebellum = image[::-1], labels[::-1], cerebellum[::-1]
        cid = f"toy{i:03d}"
        paths = {name: out_dir / f"{cid}_{name}.nii.gz" for name in ("qsm", "dn", "cerebellum")}
        save_nifti(image, affine, paths["qsm"])
        save_nifti(labels, affine, paths["dn"], is_label=True)
        save_nifti(cerebellum, affine, paths["cerebellum"], is_label=True)
        cases.append(Case(cid, f"sub{i:03d}", f"site{i % 2}", paths["qsm"], {"true": paths["dn"]},
                          paths["cerebellum"], {"group": "healthy"}))
    return write_manifest(cases, out_dir / "manifest.tsv")
