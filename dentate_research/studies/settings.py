"""What a reproduction runs: :class:`StudySettings` (data, splits, studies, architectures, training overrides)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .registry import expand_studies

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass
class StudySettings:
    """What to run (build it with :meth:`from_config`). ``train_overrides`` are Hydra-style overrides of the train
    config shared by every run.

    Attributes:
        name: study preset name (``smoke``, ``cpu``, ``paper``); tables go to ``out_dir``.
        data_preset: phantom preset to generate (``tiny``/``small``/``paper``), or None when ``manifest`` is given.
        manifest: users' own manifest (real data); overrides ``data_preset``.
        rater: manual rater used both as training label and as evaluation reference (paper: manual tracing).
        studies: the studies to run, in this order; ``all`` becomes every registered study in table order
            (:func:`~.registry.expand_studies`; an unknown name is a :class:`~dentate_research.schema.SettingsError`).
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
    data_preset: str | None
    data_seed: int
    manifest: Path | None
    n_jobs: int
    n_folds: int
    test_fraction: float
    external_sites: list[str]
    split_seed: int
    rater: str
    studies: list[str]
    architectures: list[str]
    pipeline_arch: str
    localizer_arch: str
    loso_sites: list[str]
    train_overrides: list[str]
    localizer_overrides: list[str]
    arch_overrides: dict[str, list[str]]
    loso_overrides: list[str]
    crops_from_localizer: bool
    failure_preset: str
    failure_n_subjects_per_site: int
    failure_seed: int
    failure_data_dir: Path | None
    failure_reference: str
    allow_training: bool
    device: str
    seed: int
    reuse_runs: bool
    command: str = ""  # the command line that made the tables (provenance)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | DictConfig, *, out_dir: Path | str | None = None,
                    work_dir: Path | str | None = None, command: str = "") -> StudySettings:
        """From a (partial) reproduce config: absent keys take the defaults of
        :class:`dentate_research.schema.ReproduceConfig` (the one place they live); unknown keys are an error.
        ``out_dir`` / ``work_dir`` default to ``out_root/name`` and ``work_root/name``."""
        from omegaconf import OmegaConf

        from ..schema import reproduce_config

        c = OmegaConf.to_object(reproduce_config(cfg))
        fm = c.failure_modes
        return cls(
            name=c.name, out_dir=Path(out_dir) if out_dir is not None else Path(c.out_root) / c.name,
            work_dir=Path(work_dir) if work_dir is not None else Path(c.work_root) / c.name,
            data_preset=c.data.preset, data_seed=c.data.seed,
            manifest=Path(c.data.manifest) if c.data.manifest else None, n_jobs=c.data.n_jobs,
            n_folds=c.splits.n_folds, test_fraction=c.splits.test_fraction,
            external_sites=list(c.splits.external_sites), split_seed=c.splits.seed, rater=str(c.rater),
            studies=list(c.studies), architectures=list(c.architectures), pipeline_arch=c.pipeline_arch,
            localizer_arch=c.localizer_arch, loso_sites=list(c.loso_sites), train_overrides=list(c.train_overrides),
            localizer_overrides=list(c.localizer_overrides),
            arch_overrides={str(k): list(v) for k, v in c.arch_overrides.items()},
            loso_overrides=list(c.loso_overrides), crops_from_localizer=c.crops_from_localizer,
            failure_preset=fm.preset, failure_n_subjects_per_site=fm.n_subjects_per_site, failure_seed=fm.seed,
            failure_data_dir=Path(fm.data_dir) if fm.data_dir else None, failure_reference=str(fm.reference),
            allow_training=c.allow_training, device=c.device, seed=c.seed, reuse_runs=c.reuse_runs,
            command=command)

    def __post_init__(self) -> None:
        self.studies = expand_studies(self.studies)
        if self.manifest is None and not self.data_preset:
            raise ValueError("give either data_preset (phantoms) or manifest (your own data)")
        self.out_dir, self.work_dir = Path(self.out_dir), Path(self.work_dir)
        self.manifest = Path(self.manifest) if self.manifest else None
        self.failure_data_dir = Path(self.failure_data_dir) if self.failure_data_dir else None
