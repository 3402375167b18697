"""Atlas-registration baseline: warp the template's probabilistic DN atlas to the scan, threshold at 0.5.

Uses exactly the registration of the classical baseline (:func:`~dentate_research.baselines.classical.
warp_template`), so the difference between the two baselines is what the image-driven thresholding and region
growing add on top of registration alone.
"""

from __future__ import annotations

import numpy as np

from dentate_research.data.io import Volume
from dentate_research.data.labels import LEFT_DN, RIGHT_DN
from dentate_research.data.laterality import enforce_world_sides

from .classical import WarpedAtlas, warp_template
from .template import Template


class AtlasBaseline:
    """Label = argmax side where the warped atlas probability >= ``threshold`` (default 0.5)."""

    name = "atlas"

    def __init__(self, template: Template, threshold: float = 0.5, registration_spacing_mm: float = 2.0,
                 local_refinement: bool = True) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"atlas threshold must be in (0, 1), got {threshold}")
        self.template = template
        self.threshold = threshold
        self.registration_spacing_mm = registration_spacing_mm
        self.local_refinement = local_refinement

    def segment(self, volume: Volume) -> np.ndarray:
        """Label map (uint8: 0, 1 = left DN, 2 = right DN) on ``volume``'s grid."""
        return self.segment_with_diagnostics(volume)[0]

    def segment_with_diagnostics(self, volume: Volume, atlas: WarpedAtlas | None = None
                                 ) -> tuple[np.ndarray, dict[str, object]]:
        if atlas is None:
            atlas = warp_template(self.template, volume, registration_spacing_mm=self.registration_spacing_mm,
                                  local_refinement=self.local_refinement)
        return self.segment_from_atlas(volume, atlas)

    def segment_from_atlas(self, volume: Volume, atlas: WarpedAtlas) -> tuple[np.ndarray, dict[str, object]]:
        prob = atlas.dn_probability
        labels = np.zeros(volume.shape, np.uint8)
        labels[(prob[0] >= self.threshold) & (prob[0] >= prob[1])] = LEFT_DN
        labels[(prob[1] >= self.threshold) & (prob[1] > prob[0])] = RIGHT_DN
        labels, swapped = enforce_world_sides(labels, volume.affine)
        return labels, {"registration_metric": atlas.registration_metric,
                        "local_registration_metric": atlas.local_metric,
                        "flags": ["sides_swapped"] if swapped else []}
