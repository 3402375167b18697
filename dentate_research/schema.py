"""The typed schema of ``train`` configs: the ONE place where their defaults live.

Every group of ``configs/train.yaml`` (data, stage, split, trainer, augmentation, inferer, logger, paths, arch) is a
dataclass below. Hydra composes the YAML files on top of :class:`TrainConfig` (registered in Hydra's ConfigStore
as ``train_schema``, the first entry of ``train.yaml``'s defaults list), so the YAML files only state what differs
from these defaults, and a key that is not in the schema is rejected with the key's full name. Without Hydra,
:func:`train_config` fills a plain (partial) dict from the same schema.

The YAML files ship inside the package (:data:`CONFIG_DIR`): a wheel install trains. Units: mm, voxels, minutes,
ppm as stated per field. This module imports no torch and no MONAI.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The packaged Hydra configs (``train.yaml``, ``reproduce/reproduce.yaml`` and their groups)."""

SCHEMA_NAME = "train_schema"

REFERENCE_RATER = "rater1"
"""The rater whose tracings train the models and score them by default (``data.label_rater``, ``rater``, the
``evaluate`` verb, the baseline template); ``true`` is the phantom truth."""


def arch_config_kwargs(name: str) -> dict[str, Any]:
    """The keyword arguments of architecture ``name`` as ``configs/arch/<name>.yaml`` states them: the one place an
    architecture's settings are written (the registry's defaults and ``train arch=NAME`` both read this file).
    KeyError naming the files for an unknown name."""
    path = CONFIG_DIR / "arch" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "arch").glob("*.yaml"))
        raise KeyError(f"no architecture config {path.name}; configs/arch has: {', '.join(known)}")
    return dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True).get("kwargs") or {})  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------- choices
class Choice(str, Enum):
    """A setting with a fixed set of values. Members are ``str`` whose name equals their value, so a config file or
    override states the plain word (``lr_schedule: cosine``), OmegaConf refuses any other word when the config is
    composed (naming the key and the allowed words), and code compares, hashes, formats and serializes a member as
    its word (``LRSchedule.cosine == "cosine"``)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def words(cls) -> tuple[str, ...]:
        """The allowed words, in declaration order."""
        return tuple(member.value for member in cls)


class StageName(Choice):
    localization = "localization"  # the cerebellum on a coarse grid
    segmentation = "segmentation"  # the DN on the crop


class LabelScheme(Choice):
    lateral = "lateral"  # 1 left, 2 right DN (world RAS)
    merged = "merged"  # one DN class; sides from world geometry per connected component


class NormalizationScheme(Choice):
    zscore_nonzero = "zscore_nonzero"
    robust_zscore_nonzero = "robust_zscore_nonzero"
    none = "none"


class CropSource(Choice):
    cerebellum = "cerebellum"  # the cerebellum label
    dn = "dn"  # the DN labels
    localizer = "localizer"  # the crops a trained localizer cuts (as at inference)


class OptimizerName(Choice):
    AdamW = "AdamW"
    Adam = "Adam"
    SGD = "SGD"


class LRSchedule(Choice):
    poly = "poly"
    cosine = "cosine"
    constant = "constant"


class DistBackend(Choice):
    auto = "auto"  # nccl on CUDA, gloo on CPU
    gloo = "gloo"
    nccl = "nccl"


class LRFlip(Choice):
    swap_labels = "swap_labels"  # mirror and swap labels 1/2 (lateralized labels)
    none = "none"  # never mirror left-right
    plain = "plain"  # mirror without a swap (side-less targets such as the cerebellum)


class BlendMode(Choice):
    gaussian = "gaussian"
    constant = "constant"


class TTAPolicy(Choice):
    none = "none"
    lr_swap = "lr_swap"
    all_flips_lr_swap = "all_flips_lr_swap"


class InferencePrecision(Choice):
    float32 = "float32"
    bf16 = "bf16"


class WandbMode(Choice):
    offline = "offline"
    disabled = "disabled"
    online = "online"


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class GenerateSettings:
    """Phantom data generated when the manifest is absent (``data.generate_if_missing``)."""

    preset: str = MISSING  # a phantom preset: tiny | small | cpu | paper | hard | hard_tiny
    seed: int = 0
    n_jobs: int = 1


@dataclass
class GridSettings:
    """Resampling grid of one stage: spacing in mm (a number, three numbers or null = median of the training
    cases) and patch size in voxels (x, y, z; also the sliding window)."""

    spacing_mm: Any = 1.0
    patch_size: list[int] = field(default_factory=lambda: [128, 96, 96])


@dataclass
class StageGrids:
    segmentation: GridSettings = field(default_factory=GridSettings)
    localization: GridSettings = field(default_factory=lambda: GridSettings(4.0, [64, 64, 64]))


@dataclass
class DataSettings:
    """The data set: a case manifest (TSV) and the grids its stages train on."""

    name: str = "manifest"
    manifest: str = MISSING  # path of the manifest.tsv
    root: str = "${paths.data_dir}"  # splits are read from ${data.root}/splits/splits.json (or set split.file)
    label_rater: Any = REFERENCE_RATER  # rater whose tracing is the training label ('true' = phantom truth)
    create_splits_if_missing: bool = False
    generate_if_missing: GenerateSettings | None = None
    grid: StageGrids = field(default_factory=StageGrids)


# --------------------------------------------------------------------------------------------------- stage
@dataclass
class NormalizationSettings:
    scheme: NormalizationScheme = NormalizationScheme.zscore_nonzero
    clip_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])


@dataclass
class CropSettings:
    """The region a stage sees: ``source`` cerebellum | dn | localizer (the crops inference cuts)."""

    source: CropSource = CropSource.cerebellum
    localizer_run: str | None = None  # localization run directory (source=localizer)
    margin_mm: float = 10.0
    jitter_mm: float = 4.0  # random shift of training crops (mm)


@dataclass
class StageSettings:
    """One stage of the two-step pipeline: ``localization`` (cerebellum, coarse grid) or ``segmentation`` (DN)."""

    name: StageName = StageName.segmentation
    spacing_mm: Any = "${data.grid.segmentation.spacing_mm}"  # null: median spacing of the training cases
    patch_size: Any = "${data.grid.segmentation.patch_size}"  # voxels (x, y, z), also the sliding window
    label_rater: Any = "${data.label_rater}"
    label_scheme: LabelScheme = LabelScheme.lateral
    normalization: NormalizationSettings = field(default_factory=NormalizationSettings)
    crop: CropSettings = field(default_factory=CropSettings)


# --------------------------------------------------------------------------------------------------- split
@dataclass
class SplitSettings:
    """Train/validation cases: a fold of a subject-level split file, or explicit ``train``/``val`` lists."""

    name: str = "cv"
    file: str | None = "${data.root}/splits/splits.json"
    fold: Any = 0  # 0..n_folds-1 | all | loso:<site>
    create_if_missing: bool | None = None  # null: only for phantom data generated by the same call
    n_folds: int = 5
    test_fraction: float = 0.2
    external_sites: list[str] = field(default_factory=list)
    train: list[str] | None = None
    val: list[str] | None = None
    site: str | None = None  # split=loso: the left-out site


# ------------------------------------------------------------------------------------------------- trainer
@dataclass
class OptimizerSettings:
    """null: the architecture's recommendation (models.registry)."""

    name: OptimizerName | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None


@dataclass
class TrainerSettings:
    """Iteration budget, optimisation, devices."""

    epochs: int = 50
    iterations_per_epoch: int = 100
    val_every: int = 5  # epochs between validations
    val_iterations: int = 20  # nnU-Net's own per-epoch pseudo-Dice batches
    batch_size: int = 2
    foreground_prob: float = 0.33  # fraction of patches centred on a foreground voxel
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    lr_schedule: LRSchedule = LRSchedule.poly
    warmup_iterations: int = 0
    grad_clip: float | None = 12.0
    # mixed precision: float16 on CUDA, bfloat16 on a CPU with native bf16 (float32 on other CPUs); validation on
    # CPU and inference stay float32. MONAI loop with channels_last: 0.69x the wall time per iteration at equal
    # validation Dice (benchmarks/bench_convergence.py, README "Training throughput"). nnU-Net autocasts on CUDA by
    # itself; on CPU its train steps run under bf16 autocast with this on (0.39x per step for the CPU plan)
    amp: bool = True
    channels_last: bool = True  # channels_last_3d memory format for the network and its batches (MONAI loop)
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    num_threads: int | None = None
    resume: bool = False
    # early stop after this many validations in a row that do not beat the last progress by > min_delta (null: off)
    patience: int | None = None
    min_delta: float = 0.0  # selection-score gain that counts as progress (mean DN Dice for segmentation)
    max_minutes: float | None = None  # wall-clock budget of the training loop in minutes (null: off; MONAI loop)
    init_checkpoint: str | None = None  # fine-tuning: start from these weights (set by init_from)
    devices: int = 1
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step; devices=N equals devices=1 with accumulate=N
    dist_backend: DistBackend = DistBackend.auto
    dist_timeout_min: float = 60.0  # bound of every collective: the other ranks wait while rank 0 validates


# -------------------------------------------------------------------------------------------- augmentation
_PROB_KEYS = ("lr_flip_prob", "other_flip_prob", "affine_prob", "intensity_prob", "noise_prob", "smooth_prob",
              "gamma_prob", "bias_field_prob", "offset_field_prob", "histogram_shift_prob", "lowres_prob",
              "thick_slice_prob", "streak_prob", "gibbs_prob", "dn_contrast_prob", "fov_cut_prob")
_RANGE_KEYS = ("smooth_sigma", "gamma_range", "histogram_shift_points", "lowres_zoom", "thick_slice_mm",
               "streak_amplitude", "gibbs_alpha", "dn_contrast_range", "fov_cut_fraction")


@dataclass
class AugmentationSettings:
    """Probabilities and ranges. Angles in degrees, scales as fractions, intensities in normalized units.

    ``lr_flip``: ``none`` (never mirror left-right), ``swap_labels`` (mirror and swap labels 1/2; required for
    lateralized labels) or ``plain`` (mirror without swap; only for side-less targets such as the cerebellum).

    Ranges ``(low, high)`` are sampled uniformly per patch. ``noise_std``: a number ``s`` draws the noise SD from
    U(0, s) (MONAI default), a pair draws it from U(low, high). ``smooth_sigma``: Gaussian sigma range in voxels,
    drawn per axis. Domain randomization (every ``*_prob`` below ``smooth_prob`` defaults to 0 = off):

    - ``gamma_*``: gamma contrast on the min-max rescaled patch, mean and SD restored afterwards.
    - ``bias_field_*``: multiplicative field exp(Legendre polynomial of degree 3 in patch coordinates); coefficients
      U(-coeff, coeff) (0.05 gives a typical max/min gain ratio of ~1.5 across a patch).
    - ``offset_field_*``: additive smooth field (degree-3 Legendre, no constant term) with peak |value| drawn from
      U(0, amplitude) normalized units: residual background field left by QSM background-field removal.
    - ``histogram_shift_*``: random monotonic piecewise-linear intensity mapping with (low, high) control points.
    - ``lowres_*``: isotropic down-sampling by a zoom factor in (low, high) (area averaging) and linear upsampling.
    - ``thick_slice_*``: slab average over a thickness in mm (converted to voxels with the patch spacing) along one
      of the allowed WORLD axes (0 = x/left-right, 1 = y, 2 = z/superior-inferior), one sample per slab, linear
      interpolation back to the grid (anisotropic partial volume).
    - ``streak_*``: QSM streaking: white noise restricted to the k-space region where the dipole kernel
      |D(k)| < ``streak_threshold`` (TKD's ill-conditioned cone around the magic angle) for a B0 direction within
      ``streak_tilt_deg`` of world z, scaled to a SD of U(amplitude) times the patch SD.
    - ``gibbs_*``: Gibbs ringing from k-space truncation (MONAI ``RandGibbsNoise``, ``alpha`` in [0, 1]: fraction of
      k-space removed), as around bright structures in reconstructions of truncated acquisitions.
    - ``dn_contrast_*``: SynthSeg-style per-label intensity: the DN's deviation from the median of a 3-voxel shell
      around it is scaled by U(``dn_contrast_range``), softly (Gaussian-weighted DN mask, sigma 1 voxel), so the
      nucleus is sometimes faint (young or low-iron subjects, smoothing reconstructions) and sometimes very bright;
      labels only select where, they are not changed.
    - ``fov_cut_*``: partial coverage: everything beyond a plane normal to one of the allowed WORLD axes
      (``fov_cut_axes``, either side) is removed from image AND label (set to 0, as the zero padding inference puts
      beyond a scan's last slice), the plane placed so that a fraction U(``fov_cut_fraction``) of the labelled
      structure's extent along that axis is lost; patches without a label are left unchanged. The only option
      that changes labels: a scan cannot contain what it did not cover.
    - ``nnunet_mirroring``: nnU-Net's own mirroring (its trainer; laterality-safe only for side-less targets).
    """

    enabled: bool = True
    lr_flip: LRFlip = LRFlip.swap_labels
    lr_flip_prob: float = 0.5
    other_flip_axes: list[int] = field(default_factory=list)
    other_flip_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.1
    affine_prob: float = 0.2
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_prob: float = 0.3
    noise_std: Any = 0.05  # a number or a (low, high) pair
    noise_prob: float = 0.15
    smooth_sigma: tuple[float, float] = (0.5, 1.0)
    smooth_prob: float = 0.1
    nnunet_mirroring: bool = True
    # domain randomization (SynthSeg-style), off by default
    gamma_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_field_prob: float = 0.0
    bias_field_coeff: float = 0.05
    offset_field_prob: float = 0.0
    offset_field_amplitude: float = 0.3
    histogram_shift_prob: float = 0.0
    histogram_shift_points: tuple[int, int] = (5, 10)
    lowres_prob: float = 0.0
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    thick_slice_prob: float = 0.0
    thick_slice_mm: tuple[float, float] = (1.5, 3.0)
    thick_slice_axes: list[int] = field(default_factory=lambda: [2])
    streak_prob: float = 0.0
    streak_amplitude: tuple[float, float] = (0.05, 0.3)
    streak_threshold: float = 0.15
    streak_tilt_deg: float = 25.0
    gibbs_prob: float = 0.0
    gibbs_alpha: tuple[float, float] = (0.2, 0.6)
    dn_contrast_prob: float = 0.0
    dn_contrast_range: tuple[float, float] = (0.4, 1.4)
    fov_cut_prob: float = 0.0
    fov_cut_fraction: tuple[float, float] = (0.0, 0.8)
    fov_cut_axes: list[int] = field(default_factory=lambda: [2])

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentationSettings:
        d = dict(d or {})
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known) - {"name"})
        if unknown:
            raise ValueError(f"augmentation: unknown key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        for key in _RANGE_KEYS:
            if key in known:
                known[key] = tuple(known[key])
        if isinstance(known.get("noise_std"), (list, tuple)):
            known["noise_std"] = tuple(known["noise_std"])
        for key in ("other_flip_axes", "thick_slice_axes", "fov_cut_axes"):
            if key in known:
                known[key] = list(known[key])
        return cls(**known)

    def validate(self) -> None:
        """Raise ValueError for probabilities outside [0, 1] and empty or impossible ranges."""
        for key in _PROB_KEYS:
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ValueError(f"augmentation.{key} must be in [0, 1], got {getattr(self, key)}")
        ranges = {key: getattr(self, key) for key in _RANGE_KEYS}
        if isinstance(self.noise_std, tuple):
            ranges["noise_std"] = self.noise_std
        for key, value in ranges.items():
            if len(value) != 2 or not 0 <= value[0] <= value[1]:
                raise ValueError(f"augmentation.{key} must be a range [low, high] with 0 <= low <= high, got {value}")
        checks = {
            "gamma_range": self.gamma_range[0] > 0,
            "gibbs_alpha": self.gibbs_alpha[1] <= 1,
            "histogram_shift_points": self.histogram_shift_points[0] >= 3,
            "lowres_zoom": self.lowres_zoom[0] > 0 and self.lowres_zoom[1] <= 1,
            "thick_slice_mm": self.thick_slice_mm[0] > 0,
            "thick_slice_axes": bool(self.thick_slice_axes) and set(self.thick_slice_axes) <= {0, 1, 2},
            "fov_cut_axes": bool(self.fov_cut_axes) and set(self.fov_cut_axes) <= {0, 1, 2},
            "fov_cut_fraction": self.fov_cut_fraction[1] <= 1,
            "streak_threshold": 0 < self.streak_threshold < 2 / 3,
            "streak_tilt_deg": 0 <= self.streak_tilt_deg <= 90,
            "bias_field_coeff": self.bias_field_coeff >= 0,
            "offset_field_amplitude": self.offset_field_amplitude >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"augmentation: invalid value(s) for {bad}: "
                             f"{ {k: getattr(self, k) for k in bad} }")


# ------------------------------------------------------------------------------------------------- inferer
@dataclass
class InfererConfig:
    """Sliding window (overlap fraction, blend mode, Gaussian sigma as a fraction of the window), test-time
    augmentation (none | lr_swap | all_flips_lr_swap) and post-processing.

    ``sw_batch_size``: windows per network call. 2, not 1: on CPU PyTorch 2.13 runs a batch of ONE window of our
    U-Nets through ``aten::slow_conv3d_forward`` instead of oneDNN, and two windows per call cost 0.24x the time of
    one window per call at identical probabilities (``benchmarks/bench_inference_speed.py``); validation during
    training runs the same inferer.

    ``precision``: ``float32``, or ``bf16`` = the network's forward under bf16 autocast (on CPUs with native bf16
    0.34x the float32 time of an Attention U-Net pass with channels_last, probabilities within ~0.04;
    ``benchmarks/bench_inference_speed.py``; a CPU without native bf16 runs float32, where bf16 would be slower);
    softmax and blending stay float32. On CUDA ``trainer.amp`` also autocasts validation in float16 as before."""

    overlap: float = 0.5
    mode: BlendMode = BlendMode.gaussian
    sigma_scale: float = 0.125
    sw_batch_size: int = 2
    tta: TTAPolicy = TTAPolicy.none
    precision: InferencePrecision = InferencePrecision.float32
    largest_component_per_class: bool = True


# ------------------------------------------------------------------------------------------- logger, paths
@dataclass
class WandbSettings:
    enabled: bool = False
    mode: WandbMode = WandbMode.disabled  # offline never needs a login
    project: str = "dentate_research"


@dataclass
class LoggerSettings:
    wandb: WandbSettings = field(default_factory=WandbSettings)


@dataclass
class PathSettings:
    root_dir: str = "${oc.env:DENTATE_ROOT,.}"
    data_dir: str = "${paths.root_dir}/work_data"
    runs_dir: str = "${paths.root_dir}/runs"
    run_dir: str | None = None  # null: Hydra's output dir (CLI) or runs_dir/stage/arch/timestamp (train_stage)


@dataclass
class ArchSettings:
    """A registered architecture (models.registry) and its constructor keyword arguments."""

    name: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the whole
@dataclass
class TrainConfig:
    """One training run (``python -m dentate_research train`` / :func:`dentate_research.training.train_stage`)."""

    data: DataSettings = field(default_factory=DataSettings)
    stage: StageSettings = field(default_factory=StageSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)
    inferer: InfererConfig = field(default_factory=InfererConfig)
    logger: LoggerSettings = field(default_factory=LoggerSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    arch: ArchSettings | None = None  # no default: every run names its network (arch=NAME; ??? in train.yaml)
    seed: int = 0
    init_from: str | None = None  # fine-tuning: a run folder, a two-step model folder or 'default'
    dry_run: bool = False


# --------------------------------------------------------------------------------------------- reproduce
@dataclass
class StudyDataSettings:
    """The study's data: a phantom preset generated in the work folder, or users' own manifest."""

    preset: str | None = "tiny"  # phantom preset (data.phantom.generate), null with a manifest
    seed: int = 0
    manifest: str | None = None  # users' own manifest (real data); overrides the preset
    n_jobs: int = 1  # processes generating phantoms
    # subjects per site (>= 1); null = the preset's own count. Subjects are generated from (seed, site, subject
    # index), so a larger cohort keeps the smaller one's subjects and adds new ones
    n_subjects_per_site: int | None = None


@dataclass
class StudySplitSettings:
    """Subject-level splits of the study (data.splits.make_splits)."""

    n_folds: int = SplitSettings.n_folds
    test_fraction: float = SplitSettings.test_fraction  # fraction of each development site's subjects held out
    external_sites: list[str] = field(default_factory=list)  # never used for training, planning or normalization
    seed: int = 0


@dataclass
class FailureModeSettings:
    """T7: hard-case phantoms of new subjects (a seed other than data.seed), scored against ``reference``."""

    preset: str = "hard"
    n_subjects_per_site: int = 3
    seed: int = 1
    data_dir: str | None = None  # null: <work folder>/failure_data_<preset>_seed<seed>_n<n>
    reference: str = "true"  # 'true' = the phantom truth; on real data a rater


@dataclass
class ReproduceConfig:
    """``python -m dentate_research reproduce``: which tables, on which data, with which training runs.

    ``train_overrides`` are overrides of the train config shared by every run; ``localizer_overrides``,
    ``arch_overrides[arch]`` and ``loso_overrides`` are added to the localizer's, one architecture's and T6's
    segmentation runs. Tables go to ``out_root/name``, runs and data to ``work_root/name``.
    """

    name: str = MISSING
    out_root: str = "experiments"
    work_root: str = "${oc.env:DENTATE_ROOT,.}/work_data/reproduce"
    device: str = "cpu"
    seed: int = 0
    reuse_runs: bool = True
    # the studies to run, in this order: names of studies registered in dentate_research/studies/ (one Study
    # object each, e.g. cohort = T1); "all" = every registered study in table order. An unknown name is an error
    # naming the allowed ones when the settings are built (studies.registry.expand_studies).
    studies: list[str] = field(default_factory=lambda: ["all"])
    data: StudyDataSettings = field(default_factory=StudyDataSettings)
    splits: StudySplitSettings = field(default_factory=StudySplitSettings)
    rater: str = REFERENCE_RATER  # training label and evaluation reference
    architectures: list[str] = field(default_factory=lambda: ["unet"])  # T3
    pipeline_arch: str = "unet"  # the two-step model's segmenter in T4-T7
    localizer_arch: str = "unet"
    loso_sites: list[str] = field(default_factory=list)  # T6 (empty: every development site)
    crops_from_localizer: bool = False  # segmenters train on the crops of their fold's own localizer
    train_overrides: list[str] = field(default_factory=list)
    localizer_overrides: list[str] = field(default_factory=list)
    arch_overrides: dict[str, list[str]] = field(default_factory=dict)
    loso_overrides: list[str] = field(default_factory=list)
    failure_modes: FailureModeSettings = field(default_factory=FailureModeSettings)
    # false: a training run a study needs that is not finished is an error instead of being trained
    allow_training: bool = True
    # true: compose and validate every training run the studies need and print the plan; read no data, write nothing
    dry_run: bool = False


REPRODUCE_SCHEMA_NAME = "reproduce_schema"


def register_configs() -> None:
    """Register :class:`TrainConfig` and :class:`ReproduceConfig` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=TrainConfig)
    store.store(name=REPRODUCE_SCHEMA_NAME, node=ReproduceConfig)


def compose(config_name: str = "train", overrides: Sequence[str] = (), *, config_dir: Path | str | None = None,
            return_hydra_config: bool = False) -> DictConfig:
    """Compose a packaged Hydra config (``train`` or ``reproduce/reproduce``) with command-line style overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    overrides = normalize_overrides(overrides)
    directory = Path(config_dir) if config_dir is not None else CONFIG_DIR
    if "/" in config_name:
        sub, config_name = config_name.rsplit("/", 1)
        directory = directory / sub
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(directory.resolve()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides),
                             return_hydra_config=return_hydra_config)


def trainer_settings(trainer: Mapping[str, Any] | TrainerSettings | None = None) -> TrainerSettings:
    """The typed :class:`TrainerSettings` of a (partial) trainer config: absent keys take the schema's defaults."""
    merged = OmegaConf.merge(OmegaConf.structured(TrainerSettings), trainer or {})
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def normalize_overrides(overrides: Sequence[str]) -> list[str]:
    """``+arch=X`` / ``++arch=X`` -> ``arch=X``: ``arch`` is a mandatory group (``???`` in ``train.yaml``), which
    Hydra selects without a plus; the plus form stays accepted (it was the documented one)."""
    return [o.lstrip("+") if o.lstrip("+").startswith("arch=") else o for o in overrides]


def train_config(cfg: Mapping[str, Any] | DictConfig) -> DictConfig:
    """A complete, checked train config from a full or partial one (dict or OmegaConf): the schema's defaults
    fill what is absent, and a key the schema does not know raises an error naming it."""
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), _plain(cfg))  # type: ignore[return-value]


def reproduce_config(cfg: Mapping[str, Any] | DictConfig) -> DictConfig:
    """A complete, checked reproduce config from a full or partial one (see :func:`train_config`)."""
    return OmegaConf.merge(OmegaConf.structured(ReproduceConfig), _plain(cfg))  # type: ignore[return-value]


def _plain(cfg: Mapping[str, Any] | DictConfig) -> DictConfig:
    """An untyped copy without Hydra's own node (a typed config may carry keys Hydra's '+' forced into it, which
    merging it onto the schema must see as unknown); interpolations stay unresolved."""
    container = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else dict(cfg)
    container.pop("hydra", None)  # type: ignore[union-attr]
    return OmegaConf.create(container)


# ---------------------------------------------------------------------------------------------- validation
class SettingsError(ValueError):
    """A setting that is not allowed, found when the config is composed (one line: key, value, what is allowed)."""


def _integer(low: int, optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)
    return ok, f"an integer >= {low}" + (" or null" if optional else "")


def _number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
            optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if optional and v is None:
            return True
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    text = f"a number {'>' if low_open else '>='} {low:g}"
    if high != math.inf:
        text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return ok, text + (" or null" if optional else "")


def _triple(value_ok: Callable[[Any], bool], what: str, *, optional: bool = False,
            scalar: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if optional and v is None:
            return True
        if scalar and value_ok(v):
            return True
        return isinstance(v, (list, tuple)) and len(v) == 3 and all(value_ok(x) for x in v)
    text = f"three {what}" + (f" or one {what.rstrip('s')}" if scalar else "") + (" or null" if optional else "")
    return ok, text


def _percentile_pair(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
            and 0 <= v[0] < v[1] <= 100)


_POSITIVE_INT = _integer(1)[0]
_POSITIVE_NUMBER = _number(0, low_open=True)[0]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")

TRAIN_SETTING_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _integer(0),
    "data.grid.segmentation.patch_size": _triple(_POSITIVE_INT, "integers >= 1 (voxels)"),
    "data.grid.localization.patch_size": _triple(_POSITIVE_INT, "integers >= 1 (voxels)"),
    "data.grid.segmentation.spacing_mm": _triple(_POSITIVE_NUMBER, "numbers > 0 (mm)", optional=True, scalar=True),
    "data.grid.localization.spacing_mm": _triple(_POSITIVE_NUMBER, "numbers > 0 (mm)", optional=True, scalar=True),
    "stage.patch_size": _triple(_POSITIVE_INT, "integers >= 1 (voxels)"),
    "stage.spacing_mm": _triple(_POSITIVE_NUMBER, "numbers > 0 (mm)", optional=True, scalar=True),
    "stage.normalization.clip_percentiles": (_percentile_pair, "[low, high] with 0 <= low < high <= 100"),
    "stage.crop.margin_mm": _number(0),
    "stage.crop.jitter_mm": _number(0),
    "split.n_folds": _integer(2),
    "split.test_fraction": _number(0, 1, high_open=True),
    "trainer.epochs": _integer(1),
    "trainer.iterations_per_epoch": _integer(1),
    "trainer.val_every": _integer(1),
    "trainer.val_iterations": _integer(1),
    "trainer.batch_size": _integer(1),
    "trainer.foreground_prob": _number(0, 1),
    "trainer.optimizer.lr": _number(0, optional=True),  # 0 freezes the weights (a check, not a recipe)
    "trainer.optimizer.weight_decay": _number(0, optional=True),
    "trainer.optimizer.momentum": _number(0, 1, high_open=True, optional=True),
    "trainer.warmup_iterations": _integer(0),
    "trainer.grad_clip": _number(0, low_open=True, optional=True),
    "trainer.device": (lambda v: isinstance(v, str) and bool(DEVICE_PATTERN.match(v)), "auto, cpu, cuda or cuda:N"),
    "trainer.num_threads": _integer(1, optional=True),
    "trainer.patience": _integer(1, optional=True),
    "trainer.min_delta": _number(0),
    "trainer.max_minutes": _number(0, low_open=True, optional=True),
    "trainer.devices": _integer(1),
    "trainer.accumulate_grad_batches": _integer(1),
    "trainer.dist_timeout_min": _number(0, low_open=True),
    "augmentation.rotate_deg": _number(0, 180),
    "augmentation.scale": _number(0, 1, high_open=True),
    "augmentation.intensity_scale": _number(0),
    "augmentation.intensity_shift": _number(0),
    "inferer.overlap": _number(0, 1, high_open=True),
    "inferer.sigma_scale": _number(0, low_open=True),
    "inferer.sw_batch_size": _integer(1),
}
"""Allowed values of the numeric train settings (the choices are :class:`Choice` fields): the one place they are
stated. :func:`check_train_settings` applies them when a config is composed, before any data is read."""


def check_train_settings(cfg: DictConfig) -> None:
    """Raise :class:`SettingsError` (one line: key, value, what is allowed) for the first setting of a complete train
    config (:func:`train_config`) outside :data:`TRAIN_SETTING_RANGES` or the augmentation's ranges."""
    for key, (ok, allowed) in TRAIN_SETTING_RANGES.items():
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        if not ok(value):
            raise SettingsError(f"{key}={value!r} is not allowed; allowed: {allowed}")
    try:
        augmentation = AugmentationSettings.from_dict(OmegaConf.to_container(cfg.augmentation, resolve=True))
        augmentation.validate()
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def setting_keys(schema: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a schema dataclass (``trainer.optimizer.lr``, ...); ``arch.*`` is open-ended."""
    keys: list[str] = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        keys.append(key)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += setting_keys(type(default), key + ".")
    keys += [f"arch.{f.name}" for f in fields(ArchSettings)] if schema is TrainConfig else []
    return keys


def closest_setting(key: str, schema: type = TrainConfig) -> str | None:
    """The schema key nearest to a misspelt ``key`` (same group preferred), or None."""
    keys = setting_keys(schema)
    group = key.rsplit(".", 1)[0] + "." if "." in key else ""
    same_group = [k for k in keys if group and k.startswith(group)]
    for candidates in (same_group, keys):
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in candidates}
        match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.5)
        if match:
            return by_leaf[match[0]]
        match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
        if match:
            return match[0]
    return None


def config_error_line(exc: BaseException, schema: type = TrainConfig) -> str:
    """One line for a config composition / validation error (OmegaConf's or Hydra's, possibly chained): the key,
    the value and what is allowed; for a key the schema does not know, the closest valid key."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        options = getattr(e, "options", None)
        missing = re.search(r"Could not find '([^']+)/([^']+)'", str(e))
        if missing and options is not None:  # hydra.errors.MissingConfigException: an unknown group option
            group, option = missing.groups()
            return f"{group}={option}: no such option; allowed: {', '.join(options)}"
        if isinstance(e, SettingsError):
            return str(e)
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            key = str(e.full_key)
            if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and "not in" in str(getattr(e, "msg", e)):
                near = closest_setting(key, schema)
                return f"{key}: no such setting" + (f"; did you mean {near}?" if near else "")
            msg = " ".join(str(getattr(e, "msg", None) or e).splitlines()[0].split())
            return f"{key}: {msg}"
    text = str(exc)
    if "Available options" in text:  # Hydra's "You must specify 'arch' ... Available options:\n\tunet\n..."
        head, _, options = text.partition("Available options")
        words = options.split("Config search path")[0].partition(":")[2].split()
        return f"{' '.join(head.split()).rstrip(':;. ')}; allowed: {', '.join(words)}"
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "HYDRA_FULL_ERROR" not in line]
    return "; ".join(lines) or type(exc).__name__
