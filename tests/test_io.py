"""Loaders: every bad input gives a DataError naming the file and the problem; orientation is handled."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dentate_research.data.io import DataError, load_image, load_label, save_like, save_nifti
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, check_sides, mirror_left_right

AFFINE_RAS = np.diag([1.0, 1.0, 2.0, 1.0])


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE_RAS) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _two_blob_labels(shape=(20, 12, 10)) -> np.ndarray:
    """Label 1 at low x (left in RAS), 2 at high x (right)."""
    labels = np.zeros(shape, np.uint8)
    labels[3:6, 4:8, 3:6] = LEFT_DN
    labels[14:17, 4:8, 3:6] = RIGHT_DN
    return labels


def test_valid_image_and_label(tmp_path):
    img = _write(tmp_path / "qsm.nii.gz", np.random.default_rng(0).normal(size=(20, 12, 10)).astype(np.float32))
    lab = _write(tmp_path / "lab.nii.gz", _two_blob_labels())
    image = load_image(img)
    labels = load_label(lab, reference=image)
    assert image.shape == (20, 12, 10)
    assert image.spacing == pytest.approx((1.0, 1.0, 2.0))
    assert labels.array.dtype == np.uint8
    assert check_sides(labels.array, labels.affine)["sides_consistent"] is True


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("missing.nii.gz", None, "file not found"),
        ("four_d.nii.gz", lambda p: _write(p, np.zeros((4, 4, 4, 2), np.float32)), "expected a 3D volume"),
        ("two_d.nii.gz", lambda p: _write(p, np.zeros((4, 4), np.float32)), "expected a 3D volume"),
        ("nan.nii.gz", lambda p: _write(p, np.full((4, 4, 4), np.nan, np.float32)), "no finite voxel"),
        ("zero.nii.gz", lambda p: _write(p, np.zeros((4, 0, 4), np.float32)), "zero-size"),
        ("empty.nii.gz", lambda p: p.write_bytes(b""), "file is empty"),
        ("corrupt.nii.gz", lambda p: p.write_bytes(b"\x1f\x8b\x08\x00garbage-not-gzip" * 10), "corrupt"),
        ("not_nifti.txt", lambda p: p.write_text("hello"), "unsupported file type"),
    ],
)
def test_bad_images_name_file_and_problem(tmp_path, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(DataError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_truncated_gzip(tmp_path):
    good = _write(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32))
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated.nii.gz.*(corrupt|readable)"):
        load_image(bad)


def test_label_values_outside_0_1_2(tmp_path):
    img = load_image(_write(tmp_path / "qsm.nii.gz", np.zeros((20, 12, 10), np.float32) + 0.1))
    labels = _two_blob_labels()
    labels[0, 0, 0] = 3
    path = _write(tmp_path / "lab3.nii.gz", labels)
    expected = r"lab3.nii.gz: label values \[3\] are not allowed; allowed values: \[0, 1, 2\]"
    with pytest.raises(DataError, match=expected):
        load_label(path, reference=img)
    frac = _write(tmp_path / "frac.nii.gz", labels.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match="non-integer"):
        load_label(frac)


def test_label_grid_mismatch(tmp_path):
    img = load_image(_write(tmp_path / "qsm.nii.gz", np.ones((20, 12, 10), np.float32)))
    wrong_shape = _write(tmp_path / "shape.nii.gz", np.zeros((20, 12, 9), np.uint8))
    with pytest.raises(DataError, match=r"shape.nii.gz: grid shape \(20, 12, 9\) does not match"):
        load_label(wrong_shape, reference=img)
    shifted = AFFINE_RAS.copy()
    shifted[0, 3] = 5.0
    wrong_affine = _write(tmp_path / "affine.nii.gz", np.zeros((20, 12, 10), np.uint8), shifted)
    with pytest.raises(DataError, match="affine.nii.gz: affine does not match"):
        load_label(wrong_affine, reference=img)


def test_nan_voxels_become_zero(tmp_path):
    data = np.ones((5, 5, 5), np.float32)
    data[0] = np.nan
    vol = load_image(_write(tmp_path / "partnan.nii.gz", data))
    assert np.isfinite(vol.array).all() and vol.array[0].sum() == 0


def test_orientation_las_vs_ras_gives_same_world_labels(tmp_path):
    """The same anatomy stored RAS and LAS loads identically; labels keep their world side."""
    labels = _two_blob_labels()
    rng = np.random.default_rng(1)
    image = rng.normal(size=labels.shape).astype(np.float32)
    ras = AFFINE_RAS.copy()
    # LAS storage: array x reversed, affine x column negated and origin moved so world positions match
    las = ras.copy()
    las[0, 0] = -1.0
    las[0, 3] = ras[0, 3] + (labels.shape[0] - 1) * 1.0
    _write(tmp_path / "ras_img.nii.gz", image, ras)
    _write(tmp_path / "ras_lab.nii.gz", labels, ras)
    _write(tmp_path / "las_img.nii.gz", image[::-1].copy(), las)
    _write(tmp_path / "las_lab.nii.gz", labels[::-1].copy(), las)
    a_img, b_img = load_image(tmp_path / "ras_img.nii.gz"), load_image(tmp_path / "las_img.nii.gz")
    a_lab = load_label(tmp_path / "ras_lab.nii.gz", a_img)
    b_lab = load_label(tmp_path / "las_lab.nii.gz", b_img)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    np.testing.assert_allclose(a_img.affine, b_img.affine)
    sides = check_sides(b_lab.array, b_lab.affine)
    assert sides["left_x_mm"] < sides["right_x_mm"]
    # writing back restores the LAS file exactly
    out = save_like(b_lab.array, b_lab, tmp_path / "roundtrip.nii.gz", is_label=True)
    stored = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(stored.dataobj), labels[::-1])
    np.testing.assert_allclose(stored.affine, las)


def test_mirror_swaps_labels_so_sides_stay_true():
    labels = _two_blob_labels()
    image = (labels > 0).astype(np.float32)
    image[labels == LEFT_DN] = 2.0  # left DN brighter: the mirror must carry the label with the anatomy
    flipped_img, flipped_lab = mirror_left_right(image, labels, AFFINE_RAS)
    # the bright (former left) blob now sits on the right side of the array ...
    assert flipped_img[15, 5, 4] == 2.0
    # ... and, being anatomically on the right now, it is labelled right
    assert flipped_lab[15, 5, 4] == RIGHT_DN
    assert check_sides(flipped_lab, AFFINE_RAS)["sides_consistent"] is True


def test_save_refuses_overwrite(tmp_path):
    path = save_nifti(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "x.nii.gz")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_nifti(np.zeros((2, 2, 2)), np.eye(4), path, overwrite=False)
