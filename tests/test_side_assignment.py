"""Sides decided per connected DN component from world RAS geometry (data/postprocess.assign_sides_by_components).

World x of voxel i along axis 0 is ``affine[0, 0] * i + affine[0, 3]``; the nuclei are boxes of 5 x 6 x 5 voxels.
"""

from __future__ import annotations

import numpy as np
import pytest

from dentate_research.data.labels import LEFT_DN, MERGED_DN, RIGHT_DN
from dentate_research.data.postprocess import postprocess_dn_labels

SHAPE = (60, 20, 20)


def ras(origin_x: float = -30.0) -> np.ndarray:
    affine = np.eye(4)
    affine[0, 3] = origin_x
    return affine


def las(origin_x: float = 29.0) -> np.ndarray:
    """Array index grows towards the subject's LEFT (x = 29 - i)."""
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = origin_x
    return affine


def index_of_x(affine: np.ndarray, x_mm: float) -> int:
    return int(round((x_mm - affine[0, 3]) / affine[0, 0]))


def nucleus(labels: np.ndarray, affine: np.ndarray, x_mm: float, value: int, width: int = 5) -> tuple[slice, ...]:
    """Paint a box of ``width`` voxels along x centred at world ``x_mm``; returns its slices."""
    i = index_of_x(affine, x_mm)
    box = (slice(i - width // 2, i - width // 2 + width), slice(7, 13), slice(7, 12))
    labels[box] = value
    return box


@pytest.mark.parametrize("affine", [ras(), las()], ids=["RAS", "LAS"])
def test_a_midline_through_a_nucleus_does_not_split_it(affine):
    """The localizer's midline runs through the left nucleus: both nuclei keep their whole extent and true side."""
    labels = np.zeros(SHAPE, np.uint8)
    left = nucleus(labels, affine, -14.0, MERGED_DN)
    right = nucleus(labels, affine, 14.0, MERGED_DN)
    cleaned, report = postprocess_dn_labels(labels, affine, midline_x_mm=-14.0, merged=True)
    assert (cleaned[left] == LEFT_DN).all() and (cleaned[right] == RIGHT_DN).all()
    assert report.side_evidence == "pair" and report.empty_sides == [] and report.components == 2


@pytest.mark.parametrize("affine", [ras(), las()], ids=["RAS", "LAS"])
def test_a_bright_blob_beside_a_nucleus_is_not_its_partner(affine):
    """A vein-like component 12 mm lateral to the left DN (larger than the right DN, smaller than the left) is
    dropped, not labelled: the partner of the largest nucleus is looked for across the midline first."""
    labels = np.zeros(SHAPE, np.uint8)
    left = nucleus(labels, affine, -14.0, MERGED_DN, width=6)
    i = index_of_x(affine, -26.0)
    vein = slice(i - 1, i + 2)
    labels[vein, 3:10, 3:10] = MERGED_DN  # 3 x 7 x 7 = 147 voxels: right nucleus 120, left 180
    right = nucleus(labels, affine, 14.0, MERGED_DN, width=4)
    cleaned, report = postprocess_dn_labels(labels, affine, midline_x_mm=0.0, merged=True)
    assert (cleaned[left] == LEFT_DN).all() and (cleaned[right] == RIGHT_DN).all()
    assert not cleaned[vein].any()
    assert report.removed_voxels == {"left": 3 * 7 * 7, "right": 0}


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_lone_nucleus_takes_its_side_of_the_midline(side):
    affine = ras()
    labels = np.zeros(SHAPE, np.uint8)
    box = nucleus(labels, affine, -14.0 if side == "left" else 14.0, MERGED_DN)
    cleaned, report = postprocess_dn_labels(labels, affine, midline_x_mm=1.5, merged=True)
    expected = LEFT_DN if side == "left" else RIGHT_DN
    assert (cleaned[box] == expected).all() and (cleaned > 0).sum() == (labels > 0).sum()
    assert report.side_evidence == "midline" and report.empty_sides == ["right" if side == "left" else "left"]


def test_one_component_holding_both_nuclei_is_cut_at_the_midline():
    affine = ras()
    labels = np.zeros(SHAPE, np.uint8)
    nucleus(labels, affine, -14.0, MERGED_DN)
    nucleus(labels, affine, 14.0, MERGED_DN)
    bridge_from, bridge_to = index_of_x(affine, -14.0), index_of_x(affine, 14.0)
    labels[bridge_from:bridge_to, 9:11, 9:11] = MERGED_DN  # a thin bridge across the midline
    cleaned, report = postprocess_dn_labels(labels, affine, midline_x_mm=0.0, merged=True)
    x = affine[0, 0] * np.arange(SHAPE[0]) + affine[0, 3]
    assert report.side_evidence == "split_at_midline"
    assert (x[np.nonzero(cleaned == LEFT_DN)[0]] < 0).all() and (x[np.nonzero(cleaned == RIGHT_DN)[0]] >= 0).all()


def test_lateral_model_with_inverted_sides_is_corrected_without_a_midline():
    """A lateral network that calls the left nucleus 'right' and vice versa: two components are geometry enough."""
    affine = las()
    labels = np.zeros(SHAPE, np.uint8)
    left = nucleus(labels, affine, -14.0, RIGHT_DN)
    right = nucleus(labels, affine, 14.0, LEFT_DN)
    cleaned, report = postprocess_dn_labels(labels, affine)
    assert (cleaned[left] == LEFT_DN).all() and (cleaned[right] == RIGHT_DN).all()
    assert report.sides_swapped and report.model_side_agreement == pytest.approx(0.0)


def test_lone_lateral_component_without_a_midline_keeps_the_network_labels():
    affine = ras()
    labels = np.zeros(SHAPE, np.uint8)
    box = nucleus(labels, affine, 14.0, RIGHT_DN)
    cleaned, report = postprocess_dn_labels(labels, affine)
    assert (cleaned[box] == RIGHT_DN).all() and report.side_evidence == "model"


def test_fragments_of_one_nucleus_are_not_a_pair():
    """Two pieces 6 mm apart are one nucleus (the larger piece is kept), never left and right."""
    affine = ras()
    labels = np.zeros(SHAPE, np.uint8)
    big = nucleus(labels, affine, 14.0, MERGED_DN, width=4)
    small = nucleus(labels, affine, 20.0, MERGED_DN, width=2)
    cleaned, report = postprocess_dn_labels(labels, affine, midline_x_mm=0.0, merged=True)
    assert (cleaned[big] == RIGHT_DN).all() and not cleaned[small].any()
    assert report.empty_sides == ["left"] and report.removed_voxels == {"left": 0, "right": 2 * 6 * 5}


def test_a_wrong_midline_does_not_pick_a_blob_elsewhere_as_the_partner():
    """The localizer found one hemisphere, so the midline (-14.7 mm) runs near the left nucleus. Neither a bright blob
    25 mm behind and 16 mm above nor a small speck beside the left nucleus (both left of that midline) is the
    partner: the right nucleus, mirrored in y and z and of a similar size, is (a scan of benchmarks/oof_lamina.py)."""
    affine = ras()
    shape = (60, 60, 40)
    labels = np.zeros(shape, np.uint8)
    i_left, i_right, i_blob = (index_of_x(affine, x) for x in (-11.0, 15.0, -26.0))
    labels[i_left - 3:i_left + 3, 30:37, 20:26] = MERGED_DN   # 252 voxels, centroid y 33, z 22.5
    labels[i_right - 2:i_right + 2, 31:37, 20:26] = MERGED_DN  # 144 voxels, mirrored within 1 mm
    labels[i_blob - 2:i_blob + 2, 5:11, 5:11] = MERGED_DN      # 144 voxels, y 7.5, z 7.5
    i_speck = index_of_x(affine, -28.0)
    labels[i_speck - 1:i_speck + 2, 32:35, 21:24] = MERGED_DN  # 27 voxels, mirrored in y and z but tiny
    cleaned, report = postprocess_dn_labels(labels, affine, midline_x_mm=-14.7, merged=True)
    assert (cleaned[i_left - 3:i_left + 3, 30:37, 20:26] == LEFT_DN).all()
    assert (cleaned[i_right - 2:i_right + 2, 31:37, 20:26] == RIGHT_DN).all()
    assert not cleaned[:, :12, :12].any() and not cleaned[i_speck - 1:i_speck + 2].any()
    assert report.side_evidence == "pair" and report.removed_voxels == {"left": 144 + 27, "right": 0}
