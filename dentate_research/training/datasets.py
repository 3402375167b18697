"""Random patch sampling from prepared stage samples (in memory, seeded).

Patches are drawn like nnU-Net's loader: a fraction ``foreground_prob`` of patches is centred on a random
foreground voxel (one foreground class chosen uniformly, so small structures are seen often), the rest
anywhere; images smaller than the patch are zero-padded (label 0).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from ..data.labels import merge_dn_labels
from .augmentation import Augmenter
from .preprocessing import StageSample


def pad_to_patch(array: np.ndarray, patch_size: Sequence[int], value: float = 0) -> tuple[np.ndarray, list[int]]:
    """Zero-pad (symmetrically) so each side is at least the patch side; returns the array and the lower pads."""
    pads = [max(0, int(p) - s) for p, s in zip(patch_size, array.shape, strict=True)]
    if not any(pads):
        return array, [0, 0, 0]
    before = [p // 2 for p in pads]
    padded = np.pad(array, [(b, p - b) for b, p in zip(before, pads, strict=True)], constant_values=value)
    return padded, before


class PatchSampler:
    """Draw augmented training batches ``(B, 1, *patch)`` image and ``(B, 1, *patch)`` label tensors."""

    def __init__(self, samples: Sequence[StageSample], patch_size: Sequence[int], batch_size: int,
                 foreground_prob: float = 0.33, augmenter: Augmenter | None = None, seed: int = 0,
                 merge_labels: bool = False):
        """``merge_labels``: train one foreground class (every label > 0 becomes 1; the ``merged`` DN scheme,
        :func:`dentate_research.data.labels.merge_dn_labels`)."""
        if not samples:
            raise ValueError("PatchSampler: no training samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.patch = [int(p) for p in patch_size]
        self.batch_size = int(batch_size)
        self.foreground_prob = float(foreground_prob)
        self.augmenter = augmenter
        self.rng = np.random.default_rng(seed)
        self.items = []
        for s in samples:
            image, _ = pad_to_patch(s.image, self.patch)
            label, _ = pad_to_patch(merge_dn_labels(s.label) if merge_labels else s.label, self.patch)
            classes = [int(c) for c in np.unique(label) if c > 0]
            fg = {c: np.argwhere(label == c) for c in classes}
            self.items.append((image, label, s.affine, fg))

    def spawn(self, seed: int, augmenter: Augmenter | None = None) -> PatchSampler:
        """Another patch stream over the same (shared, not copied) cases, seeded ``seed``: one per micro-batch of
        gradient accumulation (``trainer.accumulate_grad_batches``)."""
        clone = copy.copy(self)
        clone.rng = np.random.default_rng(seed)
        clone.augmenter = augmenter
        return clone

    def _patch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label, affine, fg = self.items[index]
        shape = np.asarray(image.shape)
        half = np.asarray(self.patch) // 2
        if fg and self.rng.random() < self.foreground_prob:
            cls = list(fg)[self.rng.integers(len(fg))]
            centre = fg[cls][self.rng.integers(len(fg[cls]))]
            start = np.clip(centre - half, 0, shape - self.patch)
        else:
            start = np.array([self.rng.integers(0, n - p + 1) for n, p in zip(shape, self.patch, strict=True)])
        sl = tuple(slice(int(a), int(a) + p) for a, p in zip(start, self.patch, strict=True))
        img, lab = image[sl], label[sl]
        if self.augmenter is not None:
            img, lab = self.augmenter(img, lab, affine)
        return img, lab

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.rng.integers(len(self.items), size=self.batch_size)
        pairs = [self._patch(int(i)) for i in idx]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64))
        return x, y
