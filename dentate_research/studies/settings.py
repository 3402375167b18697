"""What a reproduction runs: :class:`StudySettings` (data, splits, studies, architectures, training overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .registry import STUDIES


@dataclass
class StudySettings:
    """What to run. ``train_overrides`` are Hydra-style overrides of ``configs/train.yaml`` shared by every run.

    Attributes:
        name: study preset name (``smoke``, ``cpu``, ``paper``); tables go to ``out_dir``.
        data_preset: phantom preset to generate (``tiny``/``small``/``paper``), or None when ``manifest`` is given.
        manifest: users' own manifest (real data); overrides ``data_preset``.
        rater: manual rater used both as training label and as evaluation reference (paper: manual tracing).
        architectures: registry names benchmarked in T3.
        pipeline_arch: segmentation architecture of the two-step model used in T4-T6.
        localizer_arch: architecture of the localization stage.
        loso_sites: sites left out in T6 (empty: every development site).
        arch_overrides: extra overrides for one architecture's runs (e.g. a smaller nnU-Net on a CPU),
            reported with the tables.
        loso_overrides: extra overrides for the segmentation runs of T6's left-out-site folds (e.g. a shorter
            time cap), reported with T6.
        crops_from_localizer: segmentation runs train and validate on the crops of the same fold's localizer
            (``stage.crop.source=localizer``), i.e. exactly the crops the two-step pipeline makes.
        failure_preset, failure_n_subjects_per_site, failure_seed: the hard-case phantoms of T7 (new subjects:
            use a seed other than ``data_seed``); failure_data_dir: where they are generated (default: the work
            folder); failure_reference: the label T7 scores against ('true' on phantoms, else ``rater``).
        allow_training: False makes a run that is not finished an error instead of training it (apply finished
            runs of another study read-only, e.g. T7 on ``work_data/reproduce/cpu``).
    """

    name: str
    out_dir: Path
    work_dir: Path
    data_preset: str | None = "tiny"
    data_seed: int = 0
    manifest: Path | None = None
    n_jobs: int = 1
    n_folds: int = 5
    test_fraction: float = 0.2
    external_sites: list[str] = field(default_factory=list)
    split_seed: int = 0
    rater: str = "rater1"
    studies: list[str] = field(default_factory=lambda: list(STUDIES))
    architectures: list[str] = field(default_factory=lambda: ["unet"])
    pipeline_arch: str = "unet"
    localizer_arch: str = "unet"
    loso_sites: list[str] = field(default_factory=list)
    train_overrides: list[str] = field(default_factory=list)
    localizer_overrides: list[str] = field(default_factory=list)
    arch_overrides: dict[str, list[str]] = field(default_factory=dict)
    loso_overrides: list[str] = field(default_factory=list)
    crops_from_localizer: bool = False
    failure_preset: str = "hard"
    failure_n_subjects_per_site: int = 3
    failure_seed: int = 1
    failure_data_dir: Path | None = None
    failure_reference: str = "true"
    allow_training: bool = True
    device: str = "cpu"
    seed: int = 0
    reuse_runs: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.studies) - set(STUDIES))
        if unknown:
            raise ValueError(f"unknown studies {unknown}; allowed: {list(STUDIES)}")
        if self.manifest is None and not self.data_preset:
            raise ValueError("give either data_preset (phantoms) or manifest (your own data)")
        self.out_dir, self.work_dir = Path(self.out_dir), Path(self.work_dir)
        self.manifest = Path(self.manifest) if self.manifest else None
        self.failure_data_dir = Path(self.failure_data_dir) if self.failure_data_dir else None
