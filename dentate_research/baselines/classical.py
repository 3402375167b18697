"""Classical (non-deep-learning) DN segmentation: template registration + robust threshold + region growing.

Method (:class:`ClassicalBaseline`), the kind of tool the paper compares against:

1. Register the template (:mod:`dentate_research.baselines.template`) to the scan: foreground centre of mass,
   rigid, affine (Mattes MI); then a local affine refinement restricted to a box around the warped DN atlas
   (``local_refinement``), because whole-head alignment is loose in the posterior fossa.
2. Warp the probabilistic DN atlas (and cerebellum atlas, if the template has one) to the scan's own grid.
3. Reference tissue: the cerebellar region (warped cerebellum probability > 0.5; without a cerebellum atlas, the
   foreground within ``roi_margin_mm`` of the DN atlas) minus the dilated DN atlas. Its median ``m`` and robust
   SD ``s = 1.4826 * MAD`` give the noise-floor threshold ``m + k * s`` (``k = threshold_k``); this is
   invariant to the site's gain, zero offset and units.
4. Per side: seeds are the voxels of the atlas core (P >= ``seed_probability``) brighter than
   ``m + seed_k * s``; with ``L`` the median of the seed values, the growing threshold is
   ``t = max(m + k * s, m + contrast_fraction * (L - m))`` (half maximum by default); the region grows
   (6-connected, i.e. face neighbours) through voxels >= t inside the
   search region (atlas P > ``search_probability`` dilated by ``search_margin_mm``); the largest seeded
   component is kept (optionally hole-filled).
5. Sides are the atlas sides; a final check in world RAS swaps them if left lies right of right (flagged).

Diagnostics (:meth:`ClassicalBaseline.segment_with_diagnostics`) say where it fails: registration metric,
threshold, seed count, the DN-core contrast in robust SD units (low contrast), the segmented / atlas-expected
volume ratio (leaks into veins, undersegmentation) and whether the region reached the search boundary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from dentate_research.data.io import Volume
from dentate_research.data.labels import DN_SIDES, SIDE_NAMES
from dentate_research.data.laterality import enforce_world_sides

from .template import Template, foreground_mask, register, warp

FLAG_NAMES = ("no_seed", "low_contrast", "leak_suspected", "undersegmented", "sides_swapped",
              "registration_poor")


@dataclass
class ClassicalParams:
    """Parameters of the classical baseline (defaults chosen a priori, not tuned on evaluation cases).

    Attributes:
        threshold_k: growing threshold, robust SDs above the cerebellar reference median (noise floor).
        contrast_fraction: the growing threshold is also at least this fraction of the way from the
            reference median to the side's DN level (median of its seed voxels): a half-maximum boundary,
            so that smooth (regularised or thick-slice) edges do not make the region bleed outwards.
        seed_k: seed threshold, robust SDs above the median (> threshold_k).
        seed_probability: atlas probability defining the DN core where seeds are searched.
        search_probability: atlas probability defining where the region may grow (before dilation).
        search_margin_mm: dilation of the search region (mm), for registration error and shape variability.
        roi_margin_mm: cerebellar region radius around the DN atlas when the template has no cerebellum atlas.
        exclude_margin_mm: dilation of the DN atlas removed from the reference region (mm).
        fill_holes: fill enclosed holes in each side's mask.
        local_refinement: second affine registration restricted to the posterior fossa.
        registration_spacing_mm: registration works on images resampled to this spacing.
        low_contrast_sd: core contrast (robust SDs) below which a side is flagged 'low_contrast'.
        leak_ratio / under_ratio: segmented / expected volume ratios flagged as leak / undersegmentation.
        leak_touch_ratio: a region that reaches the search-region boundary is flagged as a leak (e.g. into
            an adjacent vein) above this smaller volume ratio.
        poor_registration_dice: atlas-overlap quality (Dice of warped atlas core with the thresholded region)
            below which the registration is flagged (heuristic; reported, not used to change the result).
    """

    threshold_k: float = 2.5
    seed_k: float = 4.0
    contrast_fraction: float = 0.5
    seed_probability: float = 0.5
    search_probability: float = 0.05
    search_margin_mm: float = 3.0
    roi_margin_mm: float = 25.0
    exclude_margin_mm: float = 4.0
    fill_holes: bool = True
    local_refinement: bool = True
    registration_spacing_mm: float = 2.0
    low_contrast_sd: float = 3.0
    leak_ratio: float = 2.0
    leak_touch_ratio: float = 1.5
    under_ratio: float = 0.4
    poor_registration_dice: float = 0.1


def _dilate_mm(mask: np.ndarray, spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return dist <= radius_mm


def _robust(values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    sigma = float(1.4826 * np.median(np.abs(values - med)))
    return med, sigma if sigma > 0 else float(values.std() or 1e-6)


@dataclass
class WarpedAtlas:
    """Template maps on the scan's grid."""

    dn_probability: np.ndarray  # (2, X, Y, Z)
    cerebellum_probability: np.ndarray | None
    registration_metric: float
    local_metric: float


def warp_template(template: Template, volume: Volume, *, registration_spacing_mm: float = 2.0,
                  local_refinement: bool = True, local_margin_mm: float = 20.0, seed: int = 0) -> WarpedAtlas:
    """Register the template to ``volume`` (global affine [+ local affine]) and warp its maps onto it."""
    res = register(volume, template.volume, transform="affine", spacing_mm=registration_spacing_mm, seed=seed)
    transform, local_metric = res.transform, float("nan")
    if local_refinement:
        prob = np.stack([warp(template.dn_probability[s], template.affine, volume, transform) for s in range(2)])
        core = prob.max(axis=0) > 0.05
        if core.any():
            roi = _dilate_mm(core, volume.spacing, local_margin_mm) & foreground_mask(volume.array)
            if roi.sum() > 1000:
                loc = register(volume, template.volume, transform="affine", spacing_mm=registration_spacing_mm,
                               fixed_roi=roi, initial=transform, seed=seed)
                transform, local_metric = loc.transform, loc.metric
    prob = np.stack([warp(template.dn_probability[s], template.affine, volume, transform) for s in range(2)])
    cereb = (warp(template.cerebellum_probability, template.affine, volume, transform)
             if template.cerebellum_probability is not None else None)
    return WarpedAtlas(np.clip(prob, 0, 1), cereb, res.metric, local_metric)


class ClassicalBaseline:
    """Threshold + region-growing DN segmentation guided by a registered template (see module docstring).

    Example::

        template = Template.load("template_dir")
        labels = ClassicalBaseline(template).segment(load_image("scan.nii.gz"))   # 0/1/2 on the scan grid
    """

    name = "classical"

    def __init__(self, template: Template, **params: object) -> None:
        unknown = set(params) - set(ClassicalParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ClassicalBaseline parameter(s) {sorted(unknown)}; allowed: "
                             f"{sorted(ClassicalParams.__dataclass_fields__)}")
        self.template = template
        self.params = ClassicalParams(**params)  # type: ignore[arg-type]
        if self.params.seed_k < self.params.threshold_k:
            raise ValueError(f"seed_k ({self.params.seed_k}) must be >= threshold_k ({self.params.threshold_k})")

    def segment(self, volume: Volume) -> np.ndarray:
        """Label map (uint8: 0, 1 = left DN, 2 = right DN) on ``volume``'s grid."""
        return self.segment_with_diagnostics(volume)[0]

    def segment_with_diagnostics(self, volume: Volume, atlas: WarpedAtlas | None = None
                                 ) -> tuple[np.ndarray, dict[str, object]]:
        """Label map and diagnostics: per-side ``<side>_<name>`` values, ``<side>_flags`` (list of flag names)
        and ``flags`` (list of ``'<side>:<flag>'`` strings, plus ``'sides_swapped'``), empty when all is well."""
        p = self.params
        if atlas is None:
            atlas = warp_template(self.template, volume, registration_spacing_mm=p.registration_spacing_mm,
                                  local_refinement=p.local_refinement)
        return self.segment_from_atlas(volume, atlas)

    def segment_from_atlas(self, volume: Volume, atlas: WarpedAtlas) -> tuple[np.ndarray, dict[str, object]]:
        """Steps 3-5 of the method given an already warped atlas (reusable for parameter studies)."""
        p = self.params
        image = volume.array.astype(np.float32)
        spacing = volume.spacing
        voxel_mm3 = float(abs(np.linalg.det(volume.affine[:3, :3])))
        fg = foreground_mask(image)
        any_dn = atlas.dn_probability.max(axis=0)
        if atlas.cerebellum_probability is not None:
            region = (atlas.cerebellum_probability > 0.5) & fg
        else:
            region = _dilate_mm(any_dn > p.search_probability, spacing, p.roi_margin_mm) & fg
        reference = region & ~_dilate_mm(any_dn > p.search_probability, spacing, p.exclude_margin_mm)
        if reference.sum() < 50:
            reference = fg
        med, sigma = _robust(image[reference])
        noise_threshold = med + p.threshold_k * sigma
        seed_threshold = med + p.seed_k * sigma
        labels = np.zeros(image.shape, np.uint8)
        diag: dict[str, object] = {"registration_metric": atlas.registration_metric,
                                   "local_registration_metric": atlas.local_metric,
                                   "reference_median": med, "reference_robust_sd": sigma,
                                   "noise_threshold": noise_threshold, "seed_threshold": seed_threshold}
        flags: list[str] = []
        structure = ndimage.generate_binary_structure(3, 1)
        for s, side in enumerate(DN_SIDES):
            name = SIDE_NAMES[side]
            prob = atlas.dn_probability[s]
            core = prob >= p.seed_probability
            search = _dilate_mm(prob > p.search_probability, spacing, p.search_margin_mm) & fg
            expected = float(prob.sum() * voxel_mm3)
            core_values = image[core & fg]
            contrast = (float(np.percentile(core_values, 90)) - med) / sigma if core_values.size else float("nan")
            seeds = core & (image >= seed_threshold) & search
            level = float(np.median(image[seeds])) if seeds.any() else float("nan")
            threshold = (max(noise_threshold, med + p.contrast_fraction * (level - med)) if seeds.any()
                         else noise_threshold)
            above = image >= threshold
            candidate = above & search
            lab, n = ndimage.label(candidate, structure=structure)
            seeded = np.unique(lab[seeds & (lab > 0)])
            mask = np.zeros(image.shape, bool)
            if seeded.size:
                sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=seeded)
                mask = lab == seeded[int(np.argmax(sizes))]
                if p.fill_holes:
                    mask = ndimage.binary_fill_holes(mask) & search
            # do not overwrite the other side
            mask &= labels == 0
            labels[mask] = side
            volume_mm3 = float(mask.sum() * voxel_mm3)
            ratio = volume_mm3 / expected if expected > 0 else float("nan")
            boundary = search & ~ndimage.binary_erosion(search, structure=structure)
            touches = bool((mask & boundary).any())
            outside = float((mask & (prob <= p.search_probability)).sum() / mask.sum()) if mask.any() else 0.0
            core_overlap = (2 * float((core & above).sum()) / float(core.sum() + (above & search).sum())
                            if core.any() else float("nan"))
            side_flags = []
            if not seeded.size:
                side_flags.append("no_seed")
            if not np.isfinite(contrast) or contrast < p.low_contrast_sd:
                side_flags.append("low_contrast")
            if ratio > p.leak_ratio or (touches and ratio > p.leak_touch_ratio):
                side_flags.append("leak_suspected")
            if seeded.size and ratio < p.under_ratio:
                side_flags.append("undersegmented")
            if not np.isfinite(core_overlap) or core_overlap < p.poor_registration_dice:
                side_flags.append("registration_poor")
            diag.update({f"{name}_n_seeds": int(seeds.sum()), f"{name}_threshold": threshold,
                         f"{name}_dn_level": level, f"{name}_core_contrast_sd": contrast,
                         f"{name}_volume_mm3": volume_mm3, f"{name}_expected_volume_mm3": expected,
                         f"{name}_volume_ratio": ratio, f"{name}_touches_search_boundary": touches,
                         f"{name}_outside_atlas_fraction": outside,
                         f"{name}_atlas_overlap": core_overlap, f"{name}_flags": side_flags})
            flags += [f"{name}:{f}" for f in side_flags]
        labels, swapped = enforce_world_sides(labels, volume.affine)
        if swapped:
            flags.append("sides_swapped")
        diag["flags"] = flags
        diag["params"] = asdict(p)
        return labels.astype(np.uint8), diag
