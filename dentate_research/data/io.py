"""Reading and writing NIfTI volumes with strict validation.

Every array handed to the rest of the library is in *canonical RAS orientation*: array axis 0 increases towards
the subject's Right, axis 1 towards Anterior, axis 2 towards Superior (``nibabel.as_closest_canonical``). The
original orientation is remembered so that outputs are written back on the user's own grid and affine.
Laterality (label 1 = left DN, 2 = right DN) is therefore always decided in world coordinates.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_output
from .labels import BACKGROUND, DN_SIDES

ALLOWED_LABEL_VALUES = (BACKGROUND, *DN_SIDES)  # the lateral scheme of data/labels.py
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DataError(ValueError):
    """Bad input data. The message names the file, the value received and what is allowed."""


@dataclass
class Volume:
    """A 3D scalar image in canonical RAS orientation.

    Attributes:
        array: float32 array (x=R, y=A, z=S), values in the file's units (ppm for QSM).
        affine: 4x4 voxel-to-world (RAS, mm) matrix of ``array``.
        path: file it was read from, if any.
        original_affine: affine of the file as stored (before reorientation), used to write outputs back.
        original_shape: shape of the file's array as stored.
        nonfinite: boolean mask (same grid as ``array``) of voxels that were NaN/inf in the file and are 0 in
            ``array``; None when every voxel was finite. Statistics exclude these voxels (they are not 0 ppm).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    original_affine: np.ndarray | None = None
    original_shape: tuple[int, ...] | None = None
    header_zooms: tuple[float, ...] = field(default=())
    nonfinite: np.ndarray | None = field(default=None, repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Volume:
        """Same grid, new voxel values (e.g. a label map predicted on this image)."""
        if array.shape != self.array.shape:
            raise DataError(f"array shape {array.shape} does not match volume shape {self.array.shape}")
        return Volume(array, self.affine.copy(), self.path, self.original_affine, self.original_shape,
                      nonfinite=self.nonfinite)


def _name(path: Path | str) -> str:
    return str(path)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{_name(path)}: file not found")
    if path.is_dir():
        raise DataError(f"{_name(path)}: is a directory, expected a NIfTI file (.nii or .nii.gz)")
    if not str(path).endswith(NIFTI_SUFFIXES):
        raise DataError(f"{_name(path)}: unsupported file type; allowed: .nii, .nii.gz")
    if path.stat().st_size == 0:
        raise DataError(f"{_name(path)}: file is empty (0 bytes)")


def _load_nifti(path: Path) -> nib.Nifti1Image:
    _check_path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # forces decompression: corrupt gzip fails here
    except (gzip.BadGzipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{_name(path)}: cannot read, the file is corrupt or truncated ({exc})") from exc
    except Exception as exc:  # nibabel raises ImageFileError and others for non-NIfTI content
        raise DataError(f"{_name(path)}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    if data.size == 0:
        dims = tuple(int(d) for d in img.header["dim"][1 : 1 + int(img.header["dim"][0])])
        raise DataError(f"{_name(path)}: zero-size volume, header dimensions {dims}")
    if data.ndim == 4 and data.shape[3] == 1:
        img = nib.Nifti1Image(np.asarray(data)[..., 0], img.affine, img.header)
    elif data.ndim != 3:
        raise DataError(f"{_name(path)}: expected a 3D volume, got {data.ndim}D with shape {data.shape}")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise DataError(f"{_name(path)}: invalid affine (singular or non-finite):\n{img.affine}")
    return img


def load_image(path: Path | str) -> Volume:
    """Load a 3D image (e.g. QSM in ppm) and reorient it to canonical RAS.

    NaN/inf voxels are set to 0 (common outside the brain mask in QSM pipelines) and remembered in
    ``Volume.nonfinite`` (excluded from statistics); an image with no finite voxel at all is an error.
    """
    path = Path(path)
    img = _load_nifti(path)
    canonical = nib.as_closest_canonical(img)
    array = np.asarray(canonical.dataobj, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.any():
        raise DataError(f"{_name(path)}: contains no finite voxel (all NaN/inf)")
    nonfinite = None
    if not finite.all():
        array = np.where(finite, array, 0.0).astype(np.float32)
        nonfinite = ~finite
    return Volume(array, canonical.affine.copy(), path, img.affine.copy(), tuple(img.shape),
                  tuple(float(z) for z in img.header.get_zooms()[:3]), nonfinite=nonfinite)


def load_label(path: Path | str, reference: Volume | None = None,
               allowed: tuple[int, ...] = ALLOWED_LABEL_VALUES) -> Volume:
    """Load a label map (integer values in ``allowed``), reoriented to canonical RAS.

    Args:
        path: NIfTI label file.
        reference: the image it belongs to; its grid (shape and affine, 1e-3 mm tolerance) must match.
        allowed: permitted label values (default 0 background, 1 left DN, 2 right DN).
    """
    path = Path(path)
    img = _load_nifti(path)
    canonical = nib.as_closest_canonical(img)
    raw = np.asarray(canonical.dataobj)
    if not np.all(np.isfinite(raw)):
        raise DataError(f"{_name(path)}: label map contains NaN/inf; allowed values: {list(allowed)}")
    rounded = np.rint(raw)
    if not np.allclose(raw, rounded, atol=1e-3):
        raise DataError(f"{_name(path)}: label map has non-integer values; allowed values: {list(allowed)}")
    values = np.unique(rounded).astype(int)
    bad = sorted(set(values.tolist()) - set(allowed))
    if bad:
        raise DataError(f"{_name(path)}: label values {bad} are not allowed; allowed values: {list(allowed)}")
    labels = rounded.astype(np.uint8)
    volume = Volume(labels, canonical.affine.copy(), path, img.affine.copy(), tuple(img.shape))
    if reference is not None:
        check_same_grid(reference, volume)
    return volume


def check_same_grid(image: Volume, other: Volume, tol_mm: float = 1e-3) -> None:
    """Raise DataError unless two volumes share shape and affine (within ``tol_mm``)."""
    a, b = _name(image.path or "image"), _name(other.path or "label")
    if image.shape != other.shape:
        raise DataError(f"{b}: grid shape {other.shape} does not match image {a} shape {image.shape}")
    if not np.allclose(image.affine, other.affine, atol=tol_mm):
        raise DataError(f"{b}: affine does not match image {a} (tolerance {tol_mm} mm):\n"
                        f"label affine\n{other.affine}\nimage affine\n{image.affine}")


def to_original_orientation(array: np.ndarray, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Map an array on ``volume``'s canonical grid back to the file's stored orientation.

    Returns the reoriented array and the original affine, ready for ``save_nifti``.
    """
    if volume.original_affine is None:
        return array, volume.affine
    orig_ornt = nib.orientations.io_orientation(volume.original_affine)
    canon_ornt = nib.orientations.io_orientation(volume.affine)
    transform = nib.orientations.ornt_transform(canon_ornt, orig_ornt)
    out = nib.orientations.apply_orientation(array, transform)
    return np.ascontiguousarray(out), volume.original_affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path | str, *, is_label: bool = False,
               overwrite: bool = True) -> Path:
    """Write ``array`` with ``affine`` (RAS mm) to ``path``; labels are stored as uint8.

    The file is written atomically (temporary name in the same folder, then renamed): no partial file ever
    sits under ``path``, even if the process is interrupted or killed."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True (CLI: --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array.astype(np.uint8) if is_label else array.astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))
    return path


def save_like(array: np.ndarray, volume: Volume, path: Path | str, *, is_label: bool = False,
              overwrite: bool = True) -> Path:
    """Save an array on ``volume``'s canonical grid in the orientation of the file it came from."""
    out, affine = to_original_orientation(array, volume)
    return save_nifti(out, affine, path, is_label=is_label, overwrite=overwrite)
