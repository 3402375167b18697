"""The one label scheme (values, left/right swap of labels and channels), Dice's empty policy and ppm units."""

from __future__ import annotations

import numpy as np
import pytest

from dentate_research.data.io import DataError
from dentate_research.data.labels import (
    CEREBELLUM_TARGET,
    LABEL_SCHEMES,
    LATERAL,
    LEFT_DN,
    MERGED,
    MERGED_DN,
    RIGHT_DN,
    SIDE_NAMES,
    is_lateralized,
    label_scheme,
    merge_dn_labels,
    swap_left_right_channels,
    swap_left_right_labels,
)
from dentate_research.data.overlap import dice
from dentate_research.data.units import array_in_ppm


def test_scheme_values_and_swap_permutation_is_an_involution():
    assert (LEFT_DN, RIGHT_DN) == (1, 2) and SIDE_NAMES == {1: "left", 2: "right"}
    assert LATERAL.class_names == ("background", "left_dn", "right_dn") and LATERAL.lateralized
    perm = LATERAL.swap_permutation()
    assert perm == (0, 2, 1) and tuple(perm[p] for p in perm) == (0, 1, 2)
    labels = np.array([0, 1, 2, 2, 1, 3], np.uint8)  # 3: an unpaired value stays
    assert swap_left_right_labels(labels).tolist() == [0, 2, 1, 1, 2, 3]
    assert np.array_equal(swap_left_right_labels(swap_left_right_labels(labels)), labels)
    assert labels.tolist() == [0, 1, 2, 2, 1, 3]  # input untouched
    assert label_scheme("lateral") is LATERAL and set(LABEL_SCHEMES) == {"lateral", "merged"}
    with pytest.raises(ValueError, match="label_scheme"):
        label_scheme("sided")


def test_merged_and_cerebellum_schemes_have_no_sides():
    for scheme in (MERGED, CEREBELLUM_TARGET):
        assert not scheme.lateralized and scheme.swap_permutation() == tuple(range(scheme.n_classes))
    assert MERGED.class_names == ("background", "dn") and MERGED_DN == 1
    assert merge_dn_labels(np.array([0, 1, 2])).tolist() == [0, 1, 1]
    assert is_lateralized(LATERAL.class_names) and not is_lateralized(MERGED.class_names)


def test_swapping_labels_and_probability_channels_agree():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 4, 5, 6)).astype(np.float32)  # (C, X, Y, Z)
    swapped = swap_left_right_channels(probs, axis=0)
    assert np.array_equal(swapped.argmax(0), swap_left_right_labels(probs.argmax(0)))
    assert np.array_equal(swap_left_right_channels(swapped, axis=0), probs)
    torch = pytest.importorskip("torch")
    batch = torch.from_numpy(probs)[None]  # (B, C, X, Y, Z), the inferer's layout
    assert torch.equal(swap_left_right_channels(batch, axis=1)[0], torch.from_numpy(swapped))
    labels = torch.from_numpy(probs.argmax(0))
    assert torch.equal(swap_left_right_labels(labels), torch.from_numpy(swapped.argmax(0)))
    with pytest.raises(ValueError, match="channels"):
        swap_left_right_channels(probs[:2], axis=0)  # a 2-class map has no left/right pair to swap


def test_dice_empty_policy_is_explicit():
    empty, full = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    assert np.isnan(dice(empty, empty, empty="nan")) and np.isnan(dice(empty, empty))  # default: evaluation's
    assert dice(empty, empty, empty="one") == 1.0
    for policy in ("nan", "one"):
        assert dice(empty, full, empty=policy) == 0.0 and dice(full, empty, empty=policy) == 0.0
        assert dice(full, full, empty=policy) == 1.0
    half = full.copy()
    half[:, :1] = False
    assert dice(half, full) == pytest.approx(2 * 6 / 15)
    with pytest.raises(ValueError, match="empty policy"):
        dice(full, full, empty="zero")  # type: ignore[arg-type]


def test_ppb_to_ppm_is_the_one_conversion():
    array = np.array([150.0, -20.0], np.float32)
    assert array_in_ppm(array, "ppm") is array and array_in_ppm(array, None) is array
    assert np.allclose(array_in_ppm(array, " PPB "), [0.15, -0.02]) and array_in_ppm(array, "ppb").dtype == np.float32
    with pytest.raises(DataError, match="units 'hz'"):
        array_in_ppm(array, "Hz", what="case c")
