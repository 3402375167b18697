"""Population template for the classical baselines: mean image + probabilistic DN atlas from training cases.

How the template is built (:func:`build_template`):

1. Every training image is intensity-normalised robustly inside its foreground (non-zero voxels):
   ``(x - median) / (1.4826 * MAD)``; this removes site gain, zero offset and units (ppm/ppb).
2. The initial reference is the training case whose foreground volume is the median one, resampled to an
   isotropic grid (``spacing_mm``, default 1 mm) around its foreground.
3. Each case is registered to the reference with SimpleITK (centre-of-mass initialisation of the foreground
   masks, rigid then affine, Mattes mutual information, multi-resolution on images pre-sampled to
   ``registration_spacing_mm``), the aligned images are averaged, and the registration is repeated against the
   mean (``n_iterations`` times) to reduce the bias towards the first reference.
4. The DN labels of one rater (default 'rater1'; phantoms may use 'true') are warped with the final transforms
   (linear interpolation of each side's binary mask) and averaged: ``dn_probability[0]`` = P(left DN),
   ``[1]`` = P(right DN). Cerebellum masks, when the manifest has them, give ``cerebellum_probability``.

No leakage: the template records the case and subject IDs it was built from; the baselines refuse to be
evaluated on those subjects (see :func:`check_no_overlap`).

Coordinates: arrays are canonical RAS (Volume); SimpleITK works in LPS, the conversion is done here only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage
from tqdm import tqdm

from dentate_research.data.atomic import atomic_output, write_text_atomic
from dentate_research.data.geometry import bbox_from_mask, resample_to_spacing
from dentate_research.data.io import DataError, Volume, load_image, load_label
from dentate_research.data.labels import DN_SIDES
from dentate_research.data.manifest import Case
from dentate_research.schema import REFERENCE_RATER

TEMPLATE_FORMAT_VERSION = 1
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------------------------- conversions
def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Canonical-RAS array + RAS affine -> SimpleITK image (LPS physical space)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array.astype(np.float32), (2, 1, 0))))
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=float)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    return img


def from_sitk(img: sitk.Image) -> np.ndarray:
    """SimpleITK image -> array with axes (x, y, z) as in the grid it was created on."""
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Foreground (brain) voxels of a QSM map: non-zero values (QSM is zero outside its mask).

    If (almost) every voxel is non-zero (no mask applied), voxels with |x| above the 20th percentile of |x|,
    closed and hole-filled, are used instead.
    """
    mask = array != 0
    if mask.mean() > 0.98:
        mag = np.abs(array)
        mask = ndimage.binary_closing(mag > np.percentile(mag, 20), iterations=2)
        mask = ndimage.binary_fill_holes(mask)
    return mask


def robust_normalise(array: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """(x - median) / (1.4826 MAD) over ``mask`` (default foreground); returns (normalised, median, sigma)."""
    mask = foreground_mask(array) if mask is None else mask
    values = array[mask]
    if values.size < 10:
        raise DataError(f"robust_normalise: only {values.size} foreground voxels; is the image empty?")
    med = float(np.median(values))
    sigma = float(1.4826 * np.median(np.abs(values - med)))
    if sigma <= 0:
        sigma = float(values.std()) or 1.0
    out = np.where(mask, (array - med) / sigma, 0.0).astype(np.float32)
    return out, med, sigma


# ----------------------------------------------------------------------------------------------- registration
@dataclass
class RegistrationResult:
    """Transform mapping points of the fixed image to the moving image (LPS mm), and the final MI metric."""

    transform: sitk.Transform
    metric: float


def _registration_image(volume: Volume, spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    norm, _, _ = robust_normalise(volume.array)
    vol = Volume(np.clip(norm, -6, 12), volume.affine)
    small = resample_to_spacing(vol, spacing_mm) if min(volume.spacing) < spacing_mm else vol
    mask = Volume((foreground_mask(volume.array)).astype(np.float32), volume.affine)
    small_mask = resample_to_spacing(mask, spacing_mm) if min(volume.spacing) < spacing_mm else mask
    return to_sitk(small.array, small.affine), to_sitk((small_mask.array > 0.5).astype(np.float32),
                                                         small_mask.affine)


def _run_registration(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform,
                      fixed_mask: sitk.Image | None, shrink: tuple[int, ...], smooth: tuple[float, ...],
                      iterations: int, seed: int) -> tuple[sitk.Transform, float]:
    reg = sitk.ImageRegistrationMethod()
    # one thread: ITK's multi-threaded metric accumulation is not bit-reproducible (transforms drifted between
    # identical runs); the registration images are small (2-3 mm), so the cost is modest
    reg.SetNumberOfThreads(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed + 1)  # SimpleITK seed 0 means "wall clock" (not reproducible)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask > 0.5, sitk.sitkUInt8))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                 numberOfIterations=iterations, relaxationFactor=0.6,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the metric's threads follow the global default
    try:
        out = reg.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    return out, float(reg.GetMetricValue())


def register(fixed: Volume, moving: Volume, *, transform: str = "affine", spacing_mm: float = 2.0,
             fixed_roi: np.ndarray | None = None, initial: sitk.Transform | None = None,
             iterations: int = 200, seed: int = 0) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (rigid, then affine if ``transform='affine'``).

    Args:
        fixed, moving: images (any units; normalised robustly inside their foregrounds).
        transform: 'rigid' or 'affine'.
        spacing_mm: both images are resampled to this isotropic spacing first (speed).
        fixed_roi: optional boolean mask on ``fixed``'s grid restricting the metric (local refinement).
        initial: start transform (fixed -> moving); default: align foreground centres of mass.
    Returns the fixed->moving transform (use it to resample moving onto fixed) and the final metric
    (Mattes MI, more negative = better).
    """
    if transform not in ("rigid", "affine"):
        raise ValueError(f"transform must be 'rigid' or 'affine', got '{transform}'")
    f_img, f_mask = _registration_image(fixed, spacing_mm)
    m_img, m_mask = _registration_image(moving, spacing_mm)
    if fixed_roi is not None:
        roi = Volume(fixed_roi.astype(np.float32), fixed.affine)
        f_mask = sitk.Resample(to_sitk(roi.array, roi.affine), f_img, sitk.Transform(), sitk.sitkLinear, 0.0)
        shrink, smooth = (2, 1), (2.0, 0.0)
    else:
        shrink, smooth = (4, 2, 1), (4.0, 2.0, 0.0)
    metric = float("nan")
    if initial is None:
        start = sitk.CenteredTransformInitializer(f_mask, m_mask, sitk.Euler3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.MOMENTS)
        current, metric = _run_registration(f_img, m_img, start, f_mask, shrink, smooth, iterations, seed)
        current = _flatten(current)
    else:
        current = _flatten(initial)
        if transform == "rigid":
            current, metric = _run_registration(f_img, m_img, current, f_mask, shrink, smooth, iterations, seed)
            current = _flatten(current)
    if transform == "affine":
        if current.GetName() == "Euler3DTransform":
            euler = sitk.Euler3DTransform(current)
            affine = sitk.AffineTransform(3)
            affine.SetMatrix(euler.GetMatrix())
            affine.SetTranslation(euler.GetTranslation())
            affine.SetCenter(euler.GetCenter())
        elif current.GetName() == "AffineTransform":
            affine = sitk.AffineTransform(current)
        else:
            raise ValueError(f"initial transform must be Euler3D or Affine, got {current.GetName()}")
        current, metric = _run_registration(f_img, m_img, affine, f_mask, shrink, smooth, iterations, seed)
    return RegistrationResult(_flatten(current), metric)


def _flatten(t: sitk.Transform) -> sitk.Transform:
    if isinstance(t, sitk.CompositeTransform) and t.GetNumberOfTransforms() == 1:
        t = t.GetNthTransform(0)
    name = t.GetName()
    if name == "AffineTransform":
        return sitk.AffineTransform(t)
    if name == "Euler3DTransform":
        return sitk.Euler3DTransform(t)
    return t


def warp(array: np.ndarray, affine: np.ndarray, target: Volume, transform: sitk.Transform,
         interpolator: int = sitk.sitkLinear, default: float = 0.0) -> np.ndarray:
    """Resample ``array`` (on ``affine``) onto ``target``'s grid with a target->source transform."""
    src = to_sitk(array, affine)
    ref = to_sitk(np.zeros(target.shape, np.float32), target.affine)
    out = sitk.Resample(src, ref, transform, interpolator, default, sitk.sitkFloat32)
    return from_sitk(out)


# ----------------------------------------------------------------------------------------------- template
@dataclass
class Template:
    """Mean normalised image and probabilistic DN atlas on an isotropic RAS grid.

    Attributes:
        image: mean robust-normalised image (dimensionless z units).
        affine: RAS voxel->world (mm) affine of the template grid.
        dn_probability: float32 (2, X, Y, Z): P(left DN), P(right DN) in [0, 1].
        cerebellum_probability: float32 (X, Y, Z) or None.
        case_ids, subjects, sites: the training cases it was built from (leakage checks).
        rater: rater whose labels made the atlas.
        info: build parameters and per-case registration metrics.
    """

    image: np.ndarray
    affine: np.ndarray
    dn_probability: np.ndarray
    cerebellum_probability: np.ndarray | None
    case_ids: list[str]
    subjects: list[str]
    sites: list[str]
    rater: str
    info: dict[str, object] = field(default_factory=dict)

    @property
    def volume(self) -> Volume:
        return Volume(self.image, self.affine)

    def save(self, out_dir: Path | str) -> Path:
        """Write ``template.json`` + NIfTI maps into ``out_dir``; returns the folder."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        maps = {"template_image": self.image, "dn_left_probability": self.dn_probability[0],
                "dn_right_probability": self.dn_probability[1], "cerebellum_probability": self.cerebellum_probability}
        for name, array in maps.items():
            if array is not None:
                with atomic_output(out / f"{name}.nii.gz") as tmp:  # keeps the .nii.gz ending: nibabel compresses
                    nib.save(nib.Nifti1Image(array.astype(np.float32), self.affine), str(tmp))
        meta = {"format_version": TEMPLATE_FORMAT_VERSION, "case_ids": self.case_ids, "subjects": self.subjects,
                "sites": self.sites, "rater": self.rater, "info": self.info,
                "has_cerebellum": self.cerebellum_probability is not None}
        write_text_atomic(out / "template.json", json.dumps(meta, indent=2, default=str))
        return out

    @classmethod
    def load(cls, path: Path | str) -> Template:
        """Read a template folder written by :meth:`save`."""
        path = Path(path)
        meta_path = path / "template.json"
        if not meta_path.exists():
            raise DataError(f"{path}: not a template folder (no template.json); build one with "
                            "`evaluate template --manifest TRAIN.tsv --out DIR`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != TEMPLATE_FORMAT_VERSION:
            raise DataError(f"{meta_path}: template format {meta.get('format_version')} is not supported "
                            f"(expected {TEMPLATE_FORMAT_VERSION})")

        def read(name: str) -> tuple[np.ndarray, np.ndarray]:
            img = nib.load(str(path / name))
            return np.asarray(img.dataobj, dtype=np.float32), img.affine

        image, affine = read("template_image.nii.gz")
        left, _ = read("dn_left_probability.nii.gz")
        right, _ = read("dn_right_probability.nii.gz")
        cereb = read("cerebellum_probability.nii.gz")[0] if meta.get("has_cerebellum") else None
        return cls(image, affine, np.stack([left, right]), cereb, list(meta["case_ids"]), list(meta["subjects"]),
                   list(meta["sites"]), meta["rater"], meta.get("info", {}))


def check_no_overlap(template: Template, cases: list[Case]) -> None:
    """Raise DataError if any case (or its subject) was used to build the template (leakage)."""
    used_subjects, used_cases = set(template.subjects), set(template.case_ids)
    bad = [c.case_id for c in cases if c.subject in used_subjects or c.case_id in used_cases]
    if bad:
        raise DataError(f"{len(bad)} evaluation case(s) belong to subjects used to build the template "
                        f"(leakage): {bad[:10]}; build the template from training subjects only")


def _side_masks(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels == side for side in DN_SIDES]).astype(np.float32)


def build_template(cases: list[Case], *, rater: str = REFERENCE_RATER, spacing_mm: float = 1.0,
                   registration_spacing_mm: float = 2.0, n_iterations: int = 2, margin_mm: float = 10.0,
                   transform: str = "affine", seed: int = 0, progress: bool = True) -> Template:
    """Build a :class:`Template` from labelled *training* cases (see module docstring for the method).

    Args:
        cases: training cases; each needs an image and a label for ``rater``.
        rater: whose labels form the probabilistic DN atlas.
        spacing_mm: isotropic template voxel size.
        registration_spacing_mm: images are resampled to this spacing for registration (speed).
        n_iterations: re-registrations against the evolving mean (>= 1).
        margin_mm: margin around the reference foreground for the template field of view.
        transform: 'rigid' or 'affine' alignment of the cases.
    """
    if len(cases) < 2:
        raise DataError(f"build_template needs at least 2 labelled training cases, got {len(cases)}")
    missing = [c.case_id for c in cases if rater not in c.labels]
    if missing:
        raise DataError(f"build_template: rater '{rater}' has no label for case(s) {missing[:10]}")
    images = [load_image(c.image) for c in cases]
    fg_volumes = [float(foreground_mask(v.array).sum()) * abs(np.linalg.det(v.affine[:3, :3])) for v in images]
    ref_index = int(np.argsort(fg_volumes)[len(fg_volumes) // 2])
    ref = images[ref_index]
    box = bbox_from_mask(foreground_mask(ref.array), ref.affine, margin_mm=margin_mm)
    assert box is not None
    # template grid: isotropic, axis-aligned with the reference's canonical RAS grid, covering the box
    corner_vox = np.asarray(box.start, float) - 0.5
    corner = ref.affine[:3, :3] @ corner_vox + ref.affine[:3, 3]
    extent = np.asarray(box.size) * np.asarray(ref.spacing)
    shape = tuple(int(s) for s in np.ceil(extent / spacing_mm))
    direction = ref.affine[:3, :3] / np.asarray(ref.spacing)
    t_affine = np.eye(4)
    t_affine[:3, :3] = direction * spacing_mm
    t_affine[:3, 3] = corner + t_affine[:3, :3] @ (0.5 * np.ones(3))
    grid = Volume(np.zeros(shape, np.float32), t_affine)
    normalised = [Volume(robust_normalise(v.array)[0], v.affine) for v in images]
    current = Volume(warp(normalised[ref_index].array, ref.affine, grid, sitk.Transform()), t_affine)
    transforms: list[sitk.Transform] = []
    metrics: list[float] = []
    for it in range(max(1, n_iterations)):
        transforms, metrics = [], []
        acc = np.zeros(shape, np.float32)
        for img, norm in tqdm(list(zip(images, normalised, strict=True)), desc=f"template iteration {it + 1}",
                              disable=not progress):
            res = register(current, img, transform=transform, spacing_mm=registration_spacing_mm, seed=seed)
            transforms.append(res.transform)
            metrics.append(res.metric)
            acc += warp(norm.array, norm.affine, grid, res.transform)
        current = Volume(acc / len(images), t_affine)
    prob = np.zeros((2, *shape), np.float32)
    cereb = np.zeros(shape, np.float32)
    n_cereb = 0
    for case, img, tfm in zip(cases, images, transforms, strict=True):
        labels = load_label(case.label(rater), reference=img).array
        sides = _side_masks(labels)
        for s in range(2):
            prob[s] += warp(sides[s], img.affine, grid, tfm)
        if case.cerebellum is not None and Path(case.cerebellum).exists():
            cm = load_label(case.cerebellum, reference=img, allowed=(0, 1)).array.astype(np.float32)
            cereb += warp(cm, img.affine, grid, tfm)
            n_cereb += 1
    prob /= len(cases)
    info = {"spacing_mm": spacing_mm, "registration_spacing_mm": registration_spacing_mm,
            "n_iterations": n_iterations, "transform": transform, "reference_case": cases[ref_index].case_id,
            "registration_metric": dict(zip([c.case_id for c in cases], metrics, strict=True)), "seed": seed,
            "n_cerebellum_masks": n_cereb}
    return Template(current.array.astype(np.float32), t_affine, np.clip(prob, 0, 1),
                    np.clip(cereb / n_cereb, 0, 1) if n_cereb == len(cases) else None,
                    [c.case_id for c in cases], sorted({c.subject for c in cases}), sorted({c.site for c in cases}),
                    rater, info)
