"""Laterality-safe data augmentation for training patches.

Label 1 is the LEFT DN and 2 the RIGHT DN in world coordinates. A left-right mirror of the image moves the left
DN to the right side, so a mirror is only allowed together with a 1 <-> 2 label swap
(:func:`dentate_research.data.laterality.mirror_left_right`), or not at all. Flips along the other axes
(anterior-posterior, superior-inferior) keep sides but are anatomically implausible and off by default.

Spatial (rotation, scaling) and intensity (gain, offset, noise, smoothing) augmentations come from MONAI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from monai.transforms import (
    Compose,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from ..data.laterality import lr_axis, mirror_left_right

LR_FLIP_MODES = ("none", "swap_labels", "plain")


@dataclass
class AugmentationSettings:
    """Probabilities and ranges. Angles in degrees, scales as fractions, intensities in normalized units.

    ``lr_flip``: ``none`` (never mirror left-right), ``swap_labels`` (mirror and swap labels 1/2; required for
    lateralized labels) or ``plain`` (mirror without swap; only for side-less targets such as the cerebellum).
    """

    enabled: bool = True
    lr_flip: str = "swap_labels"
    lr_flip_prob: float = 0.5
    other_flip_axes: list[int] = field(default_factory=list)
    other_flip_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.1
    affine_prob: float = 0.2
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_prob: float = 0.3
    noise_std: float = 0.05
    noise_prob: float = 0.15
    smooth_sigma: tuple[float, float] = (0.5, 1.0)
    smooth_prob: float = 0.1

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentationSettings:
        d = dict(d or {})
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known) - {"name", "nnunet_mirroring"})
        if unknown:
            raise ValueError(f"augmentation: unknown key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        if "smooth_sigma" in known:
            known["smooth_sigma"] = tuple(known["smooth_sigma"])
        if "other_flip_axes" in known:
            known["other_flip_axes"] = list(known["other_flip_axes"])
        return cls(**known)


class Augmenter:
    """Augment one (image, label) patch pair in canonical RAS arrays (X, Y, Z)."""

    def __init__(self, settings: AugmentationSettings, lateralized_labels: bool, seed: int = 0):
        if settings.lr_flip not in LR_FLIP_MODES:
            raise ValueError(f"augmentation.lr_flip '{settings.lr_flip}' unknown; allowed: {list(LR_FLIP_MODES)}")
        if settings.lr_flip == "plain" and lateralized_labels:
            raise ValueError("augmentation.lr_flip=plain would mirror left-right without swapping labels 1 (left "
                             "DN) and 2 (right DN), teaching the network the wrong sides; use swap_labels or none")
        self.settings = settings
        self.lateralized = lateralized_labels
        self.rng = np.random.default_rng(seed)
        s = settings
        deg = np.deg2rad(s.rotate_deg)
        transforms = []
        if s.affine_prob > 0 and (s.rotate_deg > 0 or s.scale > 0):
            transforms.append(RandAffined(keys=["image", "label"], prob=s.affine_prob, rotate_range=(deg, deg, deg),
                                          scale_range=(s.scale, s.scale, s.scale), mode=("bilinear", "nearest"),
                                          padding_mode="zeros"))
        if s.intensity_prob > 0:
            transforms.append(RandScaleIntensityd(keys=["image"], factors=s.intensity_scale, prob=s.intensity_prob))
            transforms.append(RandShiftIntensityd(keys=["image"], offsets=s.intensity_shift, prob=s.intensity_prob))
        if s.noise_prob > 0:
            transforms.append(RandGaussianNoised(keys=["image"], std=s.noise_std, prob=s.noise_prob))
        if s.smooth_prob > 0:
            transforms.append(RandGaussianSmoothd(keys=["image"], sigma_x=s.smooth_sigma, sigma_y=s.smooth_sigma,
                                                  sigma_z=s.smooth_sigma, prob=s.smooth_prob))
        self.monai = Compose(transforms)
        self.monai.set_random_state(seed=seed)

    def __call__(self, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.settings.enabled:
            return image, label
        s = self.settings
        if s.lr_flip != "none" and self.rng.random() < s.lr_flip_prob:
            if self.lateralized:
                image, label = mirror_left_right(image, label, affine)  # type: ignore[assignment]
            else:
                axis, _ = lr_axis(affine)
                image, label = np.flip(image, axis).copy(), np.flip(label, axis).copy()
        lr, _ = lr_axis(affine)
        for axis in s.other_flip_axes:
            if axis == lr:
                raise ValueError(f"augmentation.other_flip_axes contains the left-right axis {axis}; use lr_flip")
            if self.rng.random() < s.other_flip_prob:
                image, label = np.flip(image, axis).copy(), np.flip(label, axis).copy()
        out = self.monai({"image": image[None].astype(np.float32), "label": label[None].astype(np.float32)})
        img = np.asarray(out["image"], dtype=np.float32)[0]
        lab = np.rint(np.asarray(out["label"], dtype=np.float32)[0]).astype(np.uint8)
        return img, lab
