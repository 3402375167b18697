"""Synthetic multi-site QSM phantom of the brain with dentate nuclei, rater tracings and a manifest.

Main entry point: :func:`generate_dataset` (CLI: ``python -m dentate_research make-data``). Modules:
``anatomy`` (MNI-space parametric anatomy, subject sampling), ``physics`` (dipole forward model, TKD/L2 inversions),
``sites`` (nine site profiles), ``raters`` (simulated manual tracings), ``hard`` (the hard cases of real QSM, on in
the presets ``hard``, ``hard_tiny`` and ``hard_cut`` only), ``generate`` (presets, pipeline, files), ``viz`` and
``hard_figures`` (PNG figures; they import matplotlib, so they are not imported here).
"""

from .generate import (
    PRESETS,
    Preset,
    dataset_statistics,
    generate_dataset,
    rater_volume_icc,
    save_oriented,
    simulate_case,
    site_voxel_size,
)
from .sites import SITE_PROFILES, SiteProfile

__all__ = ["PRESETS", "SITE_PROFILES", "Preset", "SiteProfile", "dataset_statistics", "generate_dataset",
           "rater_volume_icc", "save_oriented", "simulate_case", "site_voxel_size"]
