"""``reproduce``: run the paper's studies (tables T1-T6) and the failure-mode study (T7) from real training runs.

    python -m dentate_research reproduce                      # experiment=smoke: minutes on a CPU
    python -m dentate_research reproduce experiment=cpu       # the committed experiments/cpu tables
    python -m dentate_research reproduce experiment=paper device=cuda data.manifest=/data/manifest.tsv
    python -m dentate_research reproduce studies=[cohort,reliability]
    python -m dentate_research reproduce experiment=paper device=cuda hydra/launcher=slurm hydra.launcher.partition=gpu
    python -m dentate_research reproduce hydra/launcher=submitit_local      # the runs as parallel local jobs
    python -m dentate_research reproduce experiment=cpu studies=[failure_modes]   # T7 on hard-case phantoms
    python -m dentate_research reproduce experiment=paper dry_run=true   # every run composed and checked, none run

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

from dentate_research.schema import CONFIG_DIR, ReproduceConfig, compose, config_error_line


def compose_train_config(overrides: list[str]):
    """The train config (``configs/train.yaml``) with Hydra overrides, as ``train`` would compose it."""
    from omegaconf import OmegaConf

    cfg = compose("train", overrides)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def settings_from_config(cfg, command: str = ""):
    """The :class:`~dentate_research.studies.StudySettings` of a composed reproduce config."""
    from dentate_research.studies import StudySettings

    return StudySettings.from_config(cfg, command=command)


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


def print_plan(settings) -> int:
    """``dry_run=true``: every training run the studies need, composed and validated, as a table; nothing is read
    or written. Exit 0, or 2 with one line naming the run and the setting."""
    from dentate_research.data.io import DataError
    from dentate_research.schema import SettingsError
    from dentate_research.studies.runner import StudyRunner

    try:
        rows = StudyRunner(settings, compose_train_config).dry_run_plan()
    except (SettingsError, DataError) as exc:  # a bad setting, or data.manifest unreadable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = settings.data.manifest or f"phantom preset '{settings.data.preset}' (seed {settings.data.seed})"
    print(f"dry run of study '{settings.name}': {len(rows)} training run(s) for studies "
          f"{', '.join(settings.studies)} on {data}, {settings.splits.n_folds} folds; tables would go to "
          f"{settings.out_dir}, runs to {settings.work_dir / 'runs'}; nothing was read or written")
    print("| run | device | epochs x iterations | batch | patch | amp | labels | cap (min) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['device']} | {r['epochs']} x {r['iterations_per_epoch']} = {r['iterations']} | "
              f"{r['batch_size']} | {r['patch_size']} | {r['amp']} | {r['label_scheme']} | {r['max_minutes']} |")
    return 0


def run_hydra(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from dentate_research.studies import registered_studies

        presets = sorted(p.stem for p in (CONFIG_DIR / "reproduce" / "experiment").glob("*.yaml"))
        print(__doc__)
        print("studies (studies=[all] runs every one, in this order):")
        for study in registered_studies():
            print(f"  {study.name:<14} {study.table_id:<3} {study.title}")
        print(f"experiment presets: {', '.join(presets)}\nconfig: {CONFIG_DIR / 'reproduce' / 'reproduce.yaml'}")
        return 0
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from dentate_research.training.launch import is_launcher_override

    launcher_args = [a for a in argv if is_launcher_override(a)]
    study_args = [a for a in argv if not is_launcher_override(a)]
    try:
        cfg = compose("reproduce/reproduce", study_args)
        settings = settings_from_config(cfg, "python -m dentate_research reproduce " + " ".join(argv))
        launcher = make_launcher(launcher_args, settings.work_dir, settings.name) if launcher_args else None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:  # one line: key, value, what is allowed
        print(f"error: {config_error_line(exc, ReproduceConfig)}", file=sys.stderr)
        return 2
    if settings.dry_run:
        return print_plan(settings)
    print(OmegaConf.to_yaml(cfg))
    from dentate_research.studies import run_studies
    from dentate_research.studies.runner import StaleRunError
    from dentate_research.training.launch import JobsFailedError

    try:
        written = run_studies(settings, compose_train_config, launcher)
    except JobsFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StaleRunError as exc:  # nothing trained or written over: the user chooses
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} tables to {settings.out_dir}:")
    for study, path in written.items():
        print(f"  {study:<14} {path}")
    return 0
