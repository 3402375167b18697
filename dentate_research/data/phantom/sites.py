"""Nine acquisition-site profiles, each clearly different (like the paper's nine datasets).

A profile fixes field strength, acquired voxel size (mm), B0 tilt relative to the image axes (degrees),
reconstruction algorithm and its parameter, field noise, and the post-processing that makes sites disagree on
scale: global gain, zero-reference offset (ppm), extra smoothing (FWHM mm), output units (ppm or ppb) and the
voxel orientation the NIfTI files are stored in (RAS, LAS, LPS ...; affines are always correct).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition and reconstruction settings of one site.

    Attributes:
        name: site ID used as folder name and manifest ``site``.
        field_strength: Tesla (3 or 7).
        voxel_size: acquired voxel size (x, y, z) mm at the ``paper`` preset.
        b0_tilt_deg, b0_azimuth_deg: B0 direction relative to the image z axis (oblique slab).
        reconstruction: 'TKD' | 'Tikhonov' | 'GradientL2'.
        recon_param: TKD threshold (0.1-0.2) or L2 regularization weight.
        field_noise_ppm: SD of Gaussian noise added to the local field (ppm) for a 1 mm^3 voxel (scaled by
            1/sqrt(voxel volume)); set so that the reconstructed noise SD at the site's own voxel size is
            ~0.005-0.02 ppm (TKD amplifies field noise ~4-5x, L2 ~1-2x, smoothed L2 <1x).
        gain: global scale of the reconstructed map (algorithm/reference dependent, 0.6-1.2).
        offset_ppm: zero-reference offset added inside the brain (+/- 0.02 ppm).
        smooth_fwhm_mm: extra Gaussian smoothing applied by the site's pipeline.
        units: 'ppm' or 'ppb' (values x 1000).
        orientation: axis codes of the stored NIfTI voxel order, e.g. 'RAS', 'LAS', 'LPS'.
        description: free text.
    """

    name: str
    field_strength: float
    voxel_size: tuple[float, float, float]
    b0_tilt_deg: float
    b0_azimuth_deg: float
    reconstruction: str
    recon_param: float
    field_noise_ppm: float
    gain: float
    offset_ppm: float
    smooth_fwhm_mm: float
    units: str = "ppm"
    orientation: str = "RAS"
    description: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


SITE_PROFILES: dict[str, SiteProfile] = {p.name: p for p in [
    SiteProfile("siteA", 3.0, (1.0, 1.0, 1.0), 4.0, 0.0, "Tikhonov", 0.02, 0.004, 0.95, 0.0, 0.0,
                description="3 T isotropic 1 mm, closed-form L2 (iLSQR-like)"),
    SiteProfile("siteB", 3.0, (0.9, 0.9, 2.0), 12.0, 20.0, "TKD", 0.15, 0.0043, 1.0, 0.015, 0.0,
                description="3 T thick 2 mm slices, TKD t=0.15, tilted slab"),
    SiteProfile("siteC", 7.0, (0.6, 0.6, 0.6), 2.0, 90.0, "GradientL2", 0.01, 0.0022, 1.15, -0.01, 0.0,
                description="7 T isotropic 0.6 mm, gradient-regularized L2"),
    SiteProfile("siteD", 3.0, (0.8, 0.8, 2.0), 8.0, 180.0, "TKD", 0.2, 0.0048, 0.85, 0.005, 0.0, units="ppb",
                orientation="LAS", description="3 T 0.8x0.8x2 mm, TKD t=0.2, stored in ppb, LAS voxel order"),
    SiteProfile("siteE", 3.0, (1.0, 1.0, 1.0), 6.0, 270.0, "GradientL2", 0.03, 0.010, 0.75, 0.02, 1.2,
                description="3 T 1 mm, strongly regularized and smoothed (MEDI-like), low gain"),
    SiteProfile("siteF", 7.0, (0.7, 0.7, 1.4), 15.0, 45.0, "TKD", 0.1, 0.0015, 1.2, -0.015, 0.0,
                description="7 T 0.7x0.7x1.4 mm, TKD t=0.1 (strong streaking), high gain, tilted"),
    SiteProfile("siteG", 3.0, (1.0, 1.0, 1.5), 0.0, 0.0, "Tikhonov", 0.03, 0.007, 0.8, -0.005, 0.6,
                orientation="LPS", description="3 T 1x1x1.5 mm, L2 lambda=0.03, LPS voxel order"),
    SiteProfile("siteH", 3.0, (0.75, 0.75, 1.5), 10.0, 135.0, "TKD", 0.18, 0.0049, 0.9, 0.01, 0.0,
                description="3 T 0.75x0.75x1.5 mm, TKD t=0.18, noisiest site (~0.02 ppm)"),
    SiteProfile("siteI", 3.0, (1.0, 1.0, 2.0), 5.0, 315.0, "GradientL2", 0.008, 0.012, 0.65, -0.02, 0.8,
                description="3 T 1x1x2 mm, gradient L2, strong underestimation (gain 0.65), negative offset"),
]}
