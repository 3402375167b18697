"""``reproduce``: run the paper's studies (tables T1-T6) and the failure-mode study (T7) from real training runs.

    python -m dentate_research reproduce                      # experiment=smoke: minutes on a CPU
    python -m dentate_research reproduce experiment=cpu       # the committed experiments/cpu tables
    python -m dentate_research reproduce experiment=paper device=cuda data.manifest=/data/manifest.tsv
    python -m dentate_research reproduce studies=[cohort,reliability]
    python -m dentate_research reproduce experiment=paper device=cuda hydra/launcher=slurm hydra.launcher.partition=gpu
    python -m dentate_research reproduce hydra/launcher=submitit_local      # the runs as parallel local jobs
    python -m dentate_research reproduce experiment=cpu studies=[failure_modes]   # T7 on hard-case phantoms

Hydra overrides select the preset (``configs/reproduce/experiment/*.yaml``) and change any leaf. Training runs
are composed from ``configs/train.yaml`` with the preset's ``train_overrides``.

``hydra/launcher=submitit_local|slurm`` (and ``hydra.launcher.KEY=VALUE``, the launchers of ``train -m``,
``configs/hydra/launcher/``): every training run the studies need is submitted as its own job first (a finished run
in the work folder is reused), the command waits for the jobs, gathers the run folders and then evaluates and
writes the tables here. Job logs: ``<work folder>/jobs/`` (``hydra.launcher.submitit_folder`` to change). Without
a launcher (or ``hydra/launcher=basic``) every run is trained in this process, one after the other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dentate_research.schema import CONFIG_DIR, compose


def _compose(config_dir: Path, name: str, overrides: list[str]):
    """A packaged config (``config_dir`` = CONFIG_DIR or a sub-folder of it) composed with ``overrides``."""
    return compose(name, overrides, config_dir=config_dir)


def compose_train_config(overrides: list[str]):
    """The train config (``configs/train.yaml``) with Hydra overrides, as ``train`` would compose it."""
    from omegaconf import OmegaConf

    cfg = _compose(CONFIG_DIR, "train", overrides)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def settings_from_config(cfg, command: str = ""):
    from dentate_research.studies import StudySettings

    out_dir = Path(str(cfg.out_root)) / str(cfg.name)
    return StudySettings(
        name=str(cfg.name), out_dir=out_dir, work_dir=Path(str(cfg.work_root)) / str(cfg.name),
        data_preset=cfg.data.preset, data_seed=int(cfg.data.seed),
        manifest=Path(str(cfg.data.manifest)) if cfg.data.manifest else None, n_jobs=int(cfg.data.n_jobs),
        n_folds=int(cfg.splits.n_folds), test_fraction=float(cfg.splits.test_fraction),
        external_sites=list(cfg.splits.external_sites), split_seed=int(cfg.splits.seed), rater=str(cfg.rater),
        studies=list(cfg.studies), architectures=list(cfg.architectures), pipeline_arch=str(cfg.pipeline_arch),
        localizer_arch=str(cfg.localizer_arch), loso_sites=list(cfg.loso_sites or []),
        train_overrides=list(cfg.train_overrides), localizer_overrides=list(cfg.localizer_overrides or []),
        arch_overrides={str(k): list(v) for k, v in (cfg.get("arch_overrides") or {}).items()},
        loso_overrides=list(cfg.get("loso_overrides") or []),
        crops_from_localizer=bool(cfg.get("crops_from_localizer", False)),
        **_failure_settings(cfg),
        device=str(cfg.device), seed=int(cfg.seed), reuse_runs=bool(cfg.reuse_runs), command=command)


def _failure_settings(cfg) -> dict:
    """T7 (failure_modes) settings from the config's ``failure_modes`` group and ``allow_training``."""
    fm = cfg.get("failure_modes") or {}
    data_dir = fm.get("data_dir")
    return {"failure_preset": str(fm.get("preset", "hard")),
            "failure_n_subjects_per_site": int(fm.get("n_subjects_per_site", 3)),
            "failure_seed": int(fm.get("seed", 1)), "failure_data_dir": Path(str(data_dir)) if data_dir else None,
            "failure_reference": str(fm.get("reference", "true")),
            "allow_training": bool(cfg.get("allow_training", True))}


def make_launcher(launcher_args: list[str], work_dir: Path, name: str):
    """A JobLauncher for ``hydra/launcher=...`` overrides (None for the basic, in-process launcher); job logs in
    ``work_dir/jobs`` unless ``hydra.launcher.submitit_folder`` is given."""
    from dentate_research.training.launch import JobLauncher, cluster_of, launcher_config

    launcher_cfg = launcher_config(launcher_args)
    if cluster_of(launcher_cfg) is None:
        return None
    explicit_folder = any(a.lstrip("+").startswith("hydra.launcher.submitit_folder=") for a in launcher_args)
    folder = None if explicit_folder else Path(work_dir).resolve() / "jobs" / "%j"
    return JobLauncher(launcher_cfg, folder, name=f"dentate_reproduce_{name}")


def run_hydra(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        presets = sorted(p.stem for p in (CONFIG_DIR / "reproduce" / "experiment").glob("*.yaml"))
        print(__doc__)
        print(f"experiment presets: {', '.join(presets)}\nconfig: {CONFIG_DIR / 'reproduce' / 'reproduce.yaml'}")
        return 0
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from dentate_research.training.launch import is_launcher_override

    launcher_args = [a for a in argv if is_launcher_override(a)]
    study_args = [a for a in argv if not is_launcher_override(a)]
    try:
        cfg = _compose(CONFIG_DIR / "reproduce", "reproduce", study_args)
        settings = settings_from_config(cfg, "python -m dentate_research reproduce " + " ".join(argv))
        launcher = make_launcher(launcher_args, settings.work_dir, settings.name) if launcher_args else None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(cfg))
    from dentate_research.studies import run_studies
    from dentate_research.training.launch import JobsFailedError

    try:
        written = run_studies(settings, compose_train_config, launcher)
    except JobsFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} tables to {settings.out_dir}:")
    for study, path in written.items():
        print(f"  {study:<14} {path}")
    return 0
