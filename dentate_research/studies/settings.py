"""What a reproduction runs: :class:`StudySettings` (data, splits, studies, architectures, training overrides)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..schema import ReproduceConfig, SettingsError, _integer, reproduce_config
from .registry import expand_studies

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass
class StudySettings(ReproduceConfig):
    """What a reproduction runs: a composed reproduce config (the fields and defaults of
    :class:`dentate_research.schema.ReproduceConfig`, inherited, not copied: ``data.preset``, ``splits.n_folds``,
    ``failure_modes.seed``, ``studies``, ``architectures``, ``train_overrides``, ...) plus what is derived from it.
    Build it with :meth:`from_config`.

    Attributes (besides the config's):
        out_dir: where the tables go (default ``out_root/name``); work_dir: data, runs and jobs (``work_root/name``).
        command: the command line that made the tables (provenance).

    ``studies`` holds the studies to run, in this order; ``all`` becomes every registered study in table order
    (:func:`~.registry.expand_studies`; an unknown name is a :class:`~dentate_research.schema.SettingsError`).
    """

    out_dir: Path = Path("experiments")
    work_dir: Path = Path("work_data")
    command: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | DictConfig, *, out_dir: Path | str | None = None,
                    work_dir: Path | str | None = None, command: str = "") -> StudySettings:
        """From a (partial) reproduce config: absent keys take the schema's defaults (the one place they live);
        unknown keys are an error. ``out_dir`` / ``work_dir`` default to ``out_root/name`` and ``work_root/name``."""
        from omegaconf import OmegaConf

        c = OmegaConf.to_object(reproduce_config(cfg))
        values = {f.name: getattr(c, f.name) for f in fields(ReproduceConfig)}
        return cls(**values, out_dir=Path(out_dir) if out_dir is not None else Path(c.out_root) / c.name,
                   work_dir=Path(work_dir) if work_dir is not None else Path(c.work_root) / c.name, command=command)

    def __post_init__(self) -> None:
        self.studies = expand_studies(self.studies)
        if not self.data.manifest and not self.data.preset:
            raise ValueError("give either data.preset (phantoms) or data.manifest (your own data)")
        n, (ok, allowed) = self.data.n_subjects_per_site, _integer(1, optional=True)
        if not ok(n):
            raise SettingsError(f"data.n_subjects_per_site={n!r} is not allowed; allowed: {allowed} (null: the "
                                "preset's own count)")
        self.out_dir, self.work_dir = Path(self.out_dir), Path(self.work_dir)

    @property
    def phantom_data_dir(self) -> Path:
        """Where the study's phantoms are generated: ``work_dir/data_<preset>_seed<seed>``, with ``_n<subjects per
        site>`` when ``data.n_subjects_per_site`` overrides the preset's count (another cohort, another folder)."""
        n = self.data.n_subjects_per_site
        return self.work_dir / (f"data_{self.data.preset}_seed{self.data.seed}" + (f"_n{n}" if n else ""))

    @property
    def manifest(self) -> Path | None:
        """Users' own manifest (``data.manifest``) as a path, None for phantoms."""
        return Path(self.data.manifest) if self.data.manifest else None
