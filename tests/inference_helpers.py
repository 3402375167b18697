"""Toy QSM scans and a tiny two-step model trained through the real training API (shared by inference tests).

The toy anatomy is deliberately easy (a bright cerebellum block and two very bright DN ellipsoids at
x = -15 mm (left) and +15 mm (right) in world RAS, 3 mm voxels) so that a U-Net with a few thousand weights learns
it in seconds; the tests check the pipeline's bookkeeping (grids, orientation, sides, files, failure policy),
not segmentation quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dentate_research.data.io import save_nifti
from dentate_research.data.manifest import Case, write_manifest

SPACING_MM = 3.0
SHAPE = (48, 56, 44)
DN_CENTRES_MM = {1: np.array([-15.0, -56.0, -36.0]), 2: np.array([15.0, -56.0, -36.0])}
LOCALIZER_SPEC = {"arch": "unet", "spacing_mm": 6.0, "patch_size": [16, 16, 16],
                  "arch_kwargs": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}}
SEGMENTER_SPEC = {"arch": "unet", "spacing_mm": 3.0, "patch_size": [24, 24, 24],
                  "arch_kwargs": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}}
EPOCHS, ITERATIONS = 6, 10
_MODEL_CACHE: dict[str, Path] = {}


def toy_affine(shape: tuple[int, int, int] = SHAPE, spacing: float = SPACING_MM) -> np.ndarray:
    """RAS affine centring the grid at (0, -20, -10) mm."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing + np.array([0.0, -20.0, -10.0])
    return affine


def toy_scan(seed: int, shape: tuple[int, int, int] = SHAPE, spacing: float = SPACING_MM, shift_mm: float = 6.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image ppm, DN labels 0/1/2, cerebellum mask, RAS affine) of one toy scan, shifted by up to ``shift_mm``."""
    rng = np.random.default_rng(seed)
    affine = toy_affine(shape, spacing)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float32)
    anat = idx @ affine[:3, :3].T + affine[:3, 3] - rng.uniform(-shift_mm, shift_mm, 3)

    def ellipsoid(centre: tuple[float, ...] | np.ndarray, radii: tuple[float, ...]) -> np.ndarray:
        return (((anat - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=-1) <= 1.0

    head = ellipsoid((0, -15, 0), (62, 78, 58))
    cerebellum = ellipsoid((0, -58, -38), (45, 22, 18)) & head
    image = np.where(head, -0.03, 0.0).astype(np.float32)
    image[ellipsoid((0, -15, 20), (50, 60, 25))] = 0.01
    image[cerebellum] = 0.06
    labels = np.zeros(shape, np.uint8)
    for side, centre in DN_CENTRES_MM.items():
        dn = ellipsoid(centre, (7.0, 9.0, 6.0))
        labels[dn] = side
        image[dn] = 0.25
    image = np.where(head, image + rng.normal(0, 0.01, shape).astype(np.float32), 0.0).astype(np.float32)
    return image, labels, cerebellum.astype(np.uint8), affine


def write_toy_cases(out_dir: Path, n: int, seed0: int = 0) -> Path:
    """Write ``n`` toy scans (image, true DN labels, cerebellum) and a manifest; returns the manifest path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        image, labels, cerebellum, affine = toy_scan(seed0 + i)
        cid = f"toy_{i:02d}"
        img = save_nifti(image, affine, out_dir / f"{cid}_qsm.nii.gz")
        lab = save_nifti(labels, affine, out_dir / f"{cid}_dn_true.nii.gz", is_label=True)
        cer = save_nifti(cerebellum, affine, out_dir / f"{cid}_cerebellum.nii.gz", is_label=True)
        cases.append(Case(cid, f"sub{i:02d}", "toy", img, {"true": lab}, cer, {"group": "healthy"}))
    return write_manifest(cases, out_dir / "manifest.tsv")


def trained_toy_model(root: Path) -> Path:
    """Train (once per process) a tiny localizer + segmenter on toy scans via ``train_stage``; model folder."""
    if "model" not in _MODEL_CACHE:
        from dentate_research.training.two_step import train_two_step_model

        manifest = write_toy_cases(root / "toy_data", 5, seed0=100)
        ids = [f"toy_{i:02d}" for i in range(5)]
        _MODEL_CACHE["model"] = train_two_step_model(root / "toy_model", manifest, localizer=LOCALIZER_SPEC,
                                                     segmenter=SEGMENTER_SPEC, train_ids=ids[:4], val_ids=ids[4:],
                                                     epochs=EPOCHS, iterations_per_epoch=ITERATIONS, lr=1e-2,
                                                     augmentation={"enabled": False},
                                                     # float32: 60 iterations at lr 1e-2 are at the edge of learning
                                                     # the toy task, and the inference tests read this model's
                                                     # outputs; they must not move with the training precision
                                                     trainer={"amp": False, "channels_last": False})
    return _MODEL_CACHE["model"]
