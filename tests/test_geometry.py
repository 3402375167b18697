"""Resampling, bounding boxes, crop/uncrop keep world positions exact."""

from __future__ import annotations

import numpy as np
import pytest

from dentate_research.data.geometry import (
    BoundingBox,
    bbox_from_mask,
    box_extent_mm,
    crop,
    largest_component,
    map_bbox,
    resample_to_reference,
    resample_to_spacing,
    uncrop,
)
from dentate_research.data.io import DataError, Volume


def _volume(shape=(40, 30, 20), spacing=(1.0, 1.0, 2.0), origin=(-20.0, -60.0, -50.0)) -> Volume:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return Volume((x + 10 * y + 100 * z).astype(np.float32), affine)


def test_resample_preserves_fov_and_world_positions():
    vol = _volume()
    coarse = resample_to_spacing(vol, 4.0)
    assert coarse.shape == (10, 8, 10)
    assert coarse.spacing == pytest.approx((4.0, 4.0, 4.0))
    corner = lambda v: v.affine[:3, :3] @ [-0.5, -0.5, -0.5] + v.affine[:3, 3]  # noqa: E731
    np.testing.assert_allclose(corner(coarse), corner(vol))
    # a linear ramp is reproduced at the new voxel centres (interior voxels)
    centre_world = coarse.affine[:3, :3] @ [5, 4, 5] + coarse.affine[:3, 3]
    old_index = np.linalg.solve(vol.affine[:3, :3], centre_world - vol.affine[:3, 3])
    expected = old_index[0] + 10 * old_index[1] + 100 * old_index[2]
    assert coarse.array[5, 4, 5] == pytest.approx(expected, abs=1e-3)


def test_label_resampling_is_nearest_neighbour():
    vol = _volume()
    labels = Volume((vol.array.astype(int) % 3).astype(np.uint8), vol.affine)
    out = resample_to_spacing(labels, (0.5, 0.5, 0.5), is_label=True)
    assert set(np.unique(out.array)) <= {0, 1, 2}
    back = resample_to_reference(out, labels, is_label=True)
    np.testing.assert_array_equal(back.array, labels.array)


def test_crop_uncrop_roundtrip_and_affine():
    vol = _volume()
    mask = np.zeros(vol.shape, bool)
    mask[10:15, 5:9, 4:6] = True
    box = bbox_from_mask(mask, vol.affine, margin_mm=2.0)
    assert box == BoundingBox((8, 3, 3), (17, 11, 7))
    cropped = crop(vol, box)
    # world position of a voxel is unchanged by the crop
    w_full = vol.affine @ [12, 6, 5, 1]
    w_crop = cropped.affine @ [12 - 8, 6 - 3, 5 - 3, 1]
    np.testing.assert_allclose(w_full, w_crop)
    restored = uncrop(cropped.array, box, vol.shape)
    np.testing.assert_array_equal(restored[box.slices], vol.array[box.slices])
    assert restored.sum() == cropped.array.sum()
    assert box_extent_mm(box, vol.affine) == pytest.approx((9.0, 8.0, 8.0))
    assert box.touches_border(vol.shape) == []
    with pytest.raises(DataError, match="does not match box size"):
        uncrop(cropped.array[:-1], box, vol.shape)


def test_bbox_min_size_clip_and_empty():
    vol = _volume()
    mask = np.zeros(vol.shape, bool)
    mask[0:2, 10:12, 10:11] = True
    box = bbox_from_mask(mask, vol.affine, margin_mm=0, min_size_mm=(10, 10, 10))
    assert box.start[0] == 0 and "x-" in box.touches_border(vol.shape)
    assert box.size[1] == 10 and box.size[2] == 5  # 10 mm at 2 mm slices
    assert bbox_from_mask(np.zeros(vol.shape, bool), vol.affine) is None


def test_map_bbox_from_coarse_grid_contains_object():
    vol = _volume()
    mask = np.zeros(vol.shape, bool)
    mask[13:22, 7:16, 5:9] = True
    coarse = resample_to_spacing(Volume(mask.astype(np.uint8), vol.affine), 4.0, is_label=True)
    # nearest-neighbour downsampling can drop up to half a coarse voxel per face: one coarse voxel of margin
    box_coarse = bbox_from_mask(coarse.array > 0, coarse.affine, margin_mm=4.0)
    box_native = map_bbox(box_coarse, coarse.affine, vol)
    inside = np.zeros(vol.shape, bool)
    inside[box_native.slices] = True
    assert inside[mask].all()


def test_largest_component():
    mask = np.zeros((10, 10, 10), bool)
    mask[0:2, 0:2, 0:2] = True
    mask[5:9, 5:9, 5:9] = True
    out = largest_component(mask)
    assert out.sum() == 64 and not out[0, 0, 0]
