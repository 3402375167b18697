"""Small synthetic QSM-like scans for evaluation/baseline tests (independent of the phantom generator).

A brain ellipsoid (white matter -0.03 ppm, cortex ribbon 0.02 ppm), a cerebellum ellipsoid and two bright DN
ellipsoids (0.15 ppm) at x = -14 mm (left) and +14 mm (right) in world RAS, Gaussian noise, zero outside the
brain. Each case gets a random rigid pose (shift and small rotation) so registration has work to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from dentate_research.data.io import save_nifti
from dentate_research.data.manifest import Case, write_manifest

DN_CENTRES = {1: np.array([-14.0, -56.0, -36.0]), 2: np.array([14.0, -56.0, -36.0])}


def make_scan(seed: int, spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
              shape: tuple[int, int, int] | None = None, noise_ppm: float = 0.01, dn_ppm: float = 0.15,
              gain: float = 1.0, max_shift_mm: float = 4.0, max_rot_deg: float = 5.0, dn_scale: float = 1.0,
              vein_ppm: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image ppm, labels 0/1/2, cerebellum mask, RAS affine) of one synthetic scan."""
    rng = np.random.default_rng(seed)
    spacing_arr = np.asarray(spacing, float)
    if shape is None:
        shape = tuple(int(v) for v in np.ceil(np.array([150.0, 180.0, 150.0]) / spacing_arr))
    affine = np.diag([*spacing_arr, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing_arr + np.array([0.0, -20.0, -10.0])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float32)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    rot = Rotation.from_euler("xyz", rng.uniform(-max_rot_deg, max_rot_deg, 3), degrees=True).as_matrix()
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    # anatomical coordinates of each voxel (inverse pose)
    anat = (world - shift) @ rot  # = R^T (world - shift)

    def ellipsoid(centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
        return (((anat - centre) / radii) ** 2).sum(axis=-1) <= 1.0

    brain = ellipsoid(np.array([0.0, -20.0, 0.0]), np.array([65.0, 80.0, 60.0]))
    inner = ellipsoid(np.array([0.0, -20.0, 0.0]), np.array([60.0, 75.0, 55.0]))
    cerebellum = ellipsoid(np.array([0.0, -58.0, -38.0]), np.array([45.0, 22.0, 18.0]))
    chi = np.where(brain, 0.02, 0.0).astype(np.float32)
    chi[inner] = -0.03
    chi[cerebellum] = -0.02
    ventricle = ellipsoid(np.array([0.0, -10.0, 10.0]), np.array([8.0, 25.0, 10.0]))
    chi[ventricle] = 0.0
    labels = np.zeros(shape, np.uint8)
    for side, centre in DN_CENTRES.items():
        dn = ellipsoid(centre, dn_scale * np.array([6.0, 8.0, 5.0]))
        labels[dn] = side
        chi[dn] = dn_ppm
    if vein_ppm:
        # a vein (radius 2.5 mm) running from the left DN's posterior edge 30 mm backwards and upwards
        start = DN_CENTRES[1] + np.array([0.0, -6.0, 0.0])
        direction = np.array([0.0, -0.8, 0.6])
        rel = anat - start
        along = rel @ direction
        radial = np.linalg.norm(rel - along[..., None] * direction, axis=-1)
        chi[(along >= 0) & (along <= 30) & (radial <= 2.5)] = vein_ppm
    chi = ndimage.gaussian_filter(chi, 0.6)
    chi = chi + rng.normal(0, noise_ppm, shape).astype(np.float32)
    chi = np.where(brain, gain * chi, 0.0).astype(np.float32)
    return chi, labels, (cerebellum & brain).astype(np.uint8), affine


def write_cases(out_dir: Path, n: int, *, site: str = "synth", seed0: int = 0, raters: tuple[str, ...] = ("true",),
                **kwargs: object) -> Path:
    """Write ``n`` synthetic scans as NIfTI + a manifest; returns the manifest path.

    Every rater gets the true labels except 'rater2' (eroded by one voxel on one side) to give rater tests a
    known disagreement.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        image, labels, cereb, affine = make_scan(seed0 + i, **kwargs)  # type: ignore[arg-type]
        cid = f"{site}_{i:02d}"
        img_p = save_nifti(image, affine, out_dir / f"{cid}_qsm.nii.gz")
        cer_p = save_nifti(cereb, affine, out_dir / f"{cid}_cerebellum.nii.gz", is_label=True)
        label_paths = {}
        for rater in raters:
            lab = labels.copy()
            if rater == "rater2":
                left = ndimage.binary_erosion(labels == 1)
                lab[(labels == 1) & ~left] = 0
            label_paths[rater] = save_nifti(lab, affine, out_dir / f"{cid}_dn_{rater}.nii.gz", is_label=True)
        cases.append(Case(cid, f"sub{seed0 + i:03d}", site, img_p, label_paths, cer_p,
                          {"group": "healthy" if i % 2 == 0 else "FRDA"}))
    return write_manifest(cases, out_dir / "manifest.tsv")
