"""The project's one label scheme: label values, class names, left/right pairs and the left-right swap.

Label values (label maps on disk, network classes = probability channels, evaluation):

- ``lateral`` DN scheme: 0 background, 1 = LEFT dentate nucleus, 2 = RIGHT dentate nucleus, where left/right are
  the subject's sides in world RAS coordinates (x < midline is left), whatever the array orientation on disk;
- ``merged`` DN scheme: 0 background, 1 = DN of either side (sides are assigned afterwards from world x);
- localization target: 0 background, 1 = cerebellum (side-less).

A left-right mirror of an image must be paired with the swap permutation on its label map (values) or on its
class-probability channels (channel index = label value); side-less schemes swap nothing. The functions here work
on numpy arrays and on torch tensors alike without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

BACKGROUND = 0
LEFT_DN = 1
RIGHT_DN = 2
MERGED_DN = 1  # the one DN class of the ``merged`` scheme
CEREBELLUM = 1  # the localization target
DN_SIDES = (LEFT_DN, RIGHT_DN)
SIDE_NAMES = {LEFT_DN: "left", RIGHT_DN: "right"}
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = ((LEFT_DN, RIGHT_DN),)

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True)
class LabelScheme:
    """Class names by label value and the left/right label pairs a left-right mirror exchanges."""

    name: str
    class_names: tuple[str, ...]
    lr_pairs: tuple[tuple[int, int], ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def lateralized(self) -> bool:
        """True when labels name sides (a left-right mirror must swap them)."""
        return bool(self.lr_pairs)

    def swap_permutation(self) -> tuple[int, ...]:
        """Label value (= channel index) -> value after a left-right mirror; the identity for side-less schemes."""
        return lr_permutation(self.n_classes, self.lr_pairs)


LATERAL = LabelScheme("lateral", ("background", "left_dn", "right_dn"), LEFT_RIGHT_PAIRS)
MERGED = LabelScheme("merged", ("background", "dn"))
CEREBELLUM_TARGET = LabelScheme("cerebellum", ("background", "cerebellum"))
# segmentation label schemes, by the name used in the config (``stage.label_scheme``)
LABEL_SCHEMES = {scheme.name: scheme for scheme in (LATERAL, MERGED)}


def label_scheme(name: str) -> LabelScheme:
    """The segmentation label scheme called ``name`` (``lateral`` or ``merged``); ValueError otherwise."""
    if name not in LABEL_SCHEMES:
        raise ValueError(f"stage.label_scheme '{name}' unknown; allowed: {list(LABEL_SCHEMES)}")
    return LABEL_SCHEMES[name]


def is_lateralized(classes: Sequence[object]) -> bool:
    """True for a network whose classes (by label value) include separate left and right DN (3 or more)."""
    return len(classes) >= LATERAL.n_classes


def lr_permutation(n_classes: int, pairs: Sequence[tuple[int, int]] = LEFT_RIGHT_PAIRS) -> tuple[int, ...]:
    """Channel order after a left-right mirror: ``order[c]`` is the channel that moves to ``c``.

    Involution by construction (each pair is exchanged, every other channel stays). ValueError when a pair does
    not fit in ``n_classes`` channels."""
    order = list(range(n_classes))
    for left, right in pairs:
        if max(left, right) >= n_classes:
            raise ValueError(f"left/right pair ({left}, {right}) needs more than {n_classes} channels")
        order[left], order[right] = right, left
    return tuple(order)


def swap_left_right_labels(labels: ArrayT, pairs: Sequence[tuple[int, int]] = LEFT_RIGHT_PAIRS) -> ArrayT:
    """Exchange left and right label values (1 <-> 2), what a left-right mirror of the image requires.

    ``labels``: numpy array or torch tensor of any shape and dtype; a new array/tensor of the same type is
    returned, other values (background, unpaired classes) unchanged."""
    source: Any = labels
    out = source.clone() if hasattr(source, "clone") else source.copy()
    for left, right in pairs:
        out[source == left] = right
        out[source == right] = left
    return out


def swap_left_right_channels(probs: ArrayT, axis: int = 1,
                             pairs: Sequence[tuple[int, int]] = LEFT_RIGHT_PAIRS) -> ArrayT:
    """Exchange the left and right DN class channels of a probability/logit array along ``axis``.

    ``probs``: numpy array or torch tensor, e.g. (B, C, X, Y, Z) with ``axis=1`` (default) or (C, X, Y, Z) with
    ``axis=0``; returns a new array/tensor. Agrees with :func:`swap_left_right_labels`: the argmax of the
    swapped channels is the swapped argmax."""
    source: Any = probs
    order = list(lr_permutation(int(source.shape[axis]), pairs))
    return source[(slice(None),) * axis + (order,)]


def merge_dn_labels(labels: np.ndarray) -> np.ndarray:
    """Lateral DN labels (0/1/2) -> the ``merged`` scheme (0/1): every label > 0 becomes :data:`MERGED_DN`."""
    return ((np.asarray(labels) > 0) * MERGED_DN).astype(np.uint8)


def network_label_scheme(stage: str, classes: Sequence[object]) -> LabelScheme:
    """The label scheme a stage network's classes follow; the one place "two segmentation classes = merged" is
    decided. ``localization`` -> :data:`CEREBELLUM_TARGET`; segmentation -> :data:`LATERAL` when ``classes`` hold
    separate left and right DN (:func:`is_lateralized`), else :data:`MERGED` (one DN class)."""
    if stage == "localization":
        return CEREBELLUM_TARGET
    return LATERAL if is_lateralized(classes) else MERGED
