"""``train``: train one stage with the Hydra configs shipped in the package (``dentate_research/configs``).

Examples::

    python -m dentate_research train +arch=nnunet
    python -m dentate_research train +arch=unet stage=localization trainer=smoke logger=none
    python -m dentate_research train -m experiment=benchmark_small +arch=unet,segresnet,nnunet
    python -m dentate_research train -m hydra/launcher=slurm +arch=unetr,swin_unetr trainer=paper
    python -m dentate_research train -m hydra/launcher=slurm hydra.launcher.partition=gpu +arch=unet split.fold=0,1 \
        dry_run=true                                   # print the jobs and the sbatch script, submit nothing
    torchrun --nproc_per_node=2 -m dentate_research train +arch=unet trainer.devices=2   # DDP, 2 processes

``arch`` is a mandatory config group (``???``: Hydra names the choices when it is missing); ``+arch=NAME`` is
accepted too, and ``python -m dentate_research list-archs`` lists the architectures without importing torch.

Run folders: an existing non-empty run folder (``hydra.run.dir=R`` or ``paths.run_dir=R``) is refused before
Hydra writes anything into it, unless ``trainer.resume=true`` (which needs a checkpoint there); two runs that start
in the same second get distinct folders (``<timestamp>``, ``<timestamp>_2``, ...). Config and data errors (unknown
fold, patch size not divisible, manifest or split file not found, ...) end with exit 2 and one line naming the key,
the value and what is allowed, without a traceback and without leaving a run folder behind.

Launchers (README "Scaling out"): ``hydra/launcher=submitit_local`` runs every job of a sweep as its own process,
``hydra/launcher=slurm`` as a Slurm job array (``configs/hydra/launcher/slurm.yaml``: partition, GPUs, time, memory,
array parallelism). ``dry_run=true`` composes every job, prints it (and, for Slurm, the sbatch script submitit would
submit) and neither trains nor submits. Under torchrun (``trainer.devices=N``) every rank runs this verb; rank 0
alone checks and writes the run folder (:mod:`dentate_research.training.distributed`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dentate_research.schema import (
    CONFIG_DIR,
    check_train_settings,
    compose,
    config_error_line,
    normalize_overrides,
    register_configs,
    train_config,
)
from dentate_research.training.rundir import RunDirError, check_run_dir, remove_if_only_hydra

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")


_RUN_DIR_KEYS = ("hydra.run.dir", "paths.run_dir")
_UNIQUE_OFF_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "paths.run_dir")
_RESUME = re.compile(r"^\+{0,2}trainer\.resume=(?i:true|1|yes)$")
_DRY_RUN = re.compile(r"^\+{0,2}dry_run=(?i:true|1|yes)$")


def _rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    import os

    return int(os.environ.get("RANK", "0") or 0)


def sweep_jobs(overrides: list[Override]) -> list[list[str]]:
    """The jobs of a ``-m`` sweep as Hydra's basic sweeper expands parsed ``overrides``: the cartesian product of the
    discrete sweeps (``a=1,2``, ``range(...)``, ``choice(...)``), a later override of a key replacing an earlier one.

    Hydra has no public function for this (``BasicSweeper.split_arguments`` is in ``hydra._internal``); this is its
    expansion written with the public :class:`hydra.core.override_parser.types.Override` methods.
    """
    import itertools

    from hydra.errors import HydraException

    per_key: dict[str, list[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        if not o.is_sweep_override():
            per_key[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            per_key[key] = [f"{key}={value}" for value in o.sweep_string_iterator()]
        else:
            raise HydraException(f"{key}: the basic sweeper cannot enumerate a {o.value_type.name} sweep; use a list "
                                 "(a=1,2), range(...) or choice(...)")
    return [list(job) for job in itertools.product(*per_key.values())]


def dry_run(argv: list[str], multirun: bool) -> int:
    """Compose every job of ``argv`` (a sweep with ``-m``), print it and, for ``hydra/launcher=slurm``, the sbatch
    script submitit would submit for the whole sweep; nothing is trained or submitted."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dentate_research.training.launch import cluster_of, make_executor, sbatch_script

    overrides = [a for a in argv if a not in ("-m", "--multirun") and not _DRY_RUN.match(a)]
    parsed = OverridesParser.create().parse_overrides(overrides)
    jobs = sweep_jobs(parsed) if multirun else [overrides]
    cfgs = [compose("train", [*job, "hydra.job.name=train"], return_hydra_config=True) for job in jobs]
    GlobalHydra.instance().clear()
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(cfgs[0].hydra.launcher, resolve=True)
    cluster = cluster_of(launcher)
    where = {None: "in this process, one after the other", "local": "as local submitit jobs",
             "slurm": "as a Slurm job array"}[cluster]
    print(f"[train] dry run: {len(jobs)} job(s) {where}; nothing is trained or submitted")
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    for i, (job, cfg) in enumerate(zip(jobs, cfgs, strict=True)):
        varying = [a for a in job if a.split("=", 1)[0] in swept] or ["(no sweep)"]
        print(f"  #{i}: {' '.join(varying)}  ->  {cfg.stage.name} / {cfg.arch.name}, trainer.devices="
              f"{cfg.trainer.devices}")
    if cluster == "slurm":
        executor = make_executor(launcher, dry_run=True)
        print(f"[train] sbatch script (submitit {executor.folder}):")
        print(sbatch_script(executor, len(jobs)))
    return 0


def _override(argv: list[str], key: str) -> str | None:
    """The value of ``key=VALUE`` (optionally with ``+``/``++``) in ``argv``, quotes removed; None if absent."""
    pattern = re.compile(rf"^\+{{0,2}}{re.escape(key)}=(.*)$")
    for a in argv:
        m = pattern.match(a)
        if m:
            return m.group(1).strip("'\"")
    return None


def check_jobs(argv: list[str], multirun: bool) -> str | None:
    """Compose every job of ``argv`` (each job of a ``-m`` sweep) and check its settings against the schema
    (choices, ranges, unknown keys) before Hydra makes a run folder or any data is read; the first error as one
    line (key, value, what is allowed), or None. Arguments Hydra reads as flags other than ``-m`` skip the check
    here (the run checks its config again before reading data)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    try:
        jobs = sweep_jobs(OverridesParser.create().parse_overrides(overrides)) if multirun else [overrides]
        for job in jobs:
            check_train_settings(train_config(compose("train", [*job, "hydra.job.name=train"],
                                                      return_hydra_config=True)))
    except Exception as exc:  # noqa: BLE001 - any composition error is reported as one line
        return config_error_line(exc)
    finally:
        GlobalHydra.instance().clear()
    return None


def normalize_argv(argv: list[str]) -> list[str]:
    """``+arch=X`` -> ``arch=X`` (:func:`dentate_research.schema.normalize_overrides`)."""
    return normalize_overrides(argv)


def run_hydra(argv: list[str]) -> int:
    """Run the Hydra app with ``argv`` (the verb already removed); returns the exit code."""
    if not CONFIG_DIR.is_dir():
        print(f"error: config folder {CONFIG_DIR} not found (a broken install: the configs ship inside the "
              "package)", file=sys.stderr)
        return 2
    argv = normalize_argv(list(argv))
    if any(a in _INFO_FLAGS for a in argv) and not any(a.startswith("arch=") for a in argv):
        # Hydra composes the config to show it, and arch is mandatory: show it for one architecture
        print("note: arch is mandatory; showing the config with arch=unet (python -m dentate_research list-archs "
              "lists the others)", file=sys.stderr)
        argv.append("arch=unet")
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not any(a in _INFO_FLAGS for a in argv):
        problem = check_jobs(argv, multirun)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    if any(_DRY_RUN.match(a) for a in argv) and not any(a in _INFO_FLAGS for a in argv):
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return dry_run(argv, multirun)
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            print(f"error: {config_error_line(exc)}", file=sys.stderr)
            return 2
    resume = any(_RESUME.match(a) for a in argv)
    # under torchrun only rank 0 checks: the other ranks may start after rank 0 has begun writing the folder
    if not multirun and not resume and _rank() == 0 and not any(a in _INFO_FLAGS for a in argv):
        for key in _RUN_DIR_KEYS:  # before Hydra writes its .hydra/ files into an existing run
            value = _override(argv, key)
            if value:
                try:
                    check_run_dir(Path(value).expanduser(), resume=False, key=key)
                except RunDirError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
    unique = not any(_override(argv, key) for key in _UNIQUE_OFF_KEYS)
    failures: list[str] = []
    started: list[bool] = []

    import hydra
    from omegaconf import DictConfig, open_dict
    from omegaconf.errors import OmegaConfBaseException

    register_configs()  # the schema (train_schema) every YAML file of the train config extends

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def _train(cfg: DictConfig) -> None:
        import os

        from hydra.core.hydra_config import HydraConfig

        from dentate_research.training.api import train_stage

        started.append(True)
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            if cfg.paths.get("run_dir") is None:
                with open_dict(cfg):
                    cfg.paths.run_dir = str(output_dir)
            run_dir = train_stage(cfg, unique_run_dir=unique)
        except (ValueError, FileNotFoundError, FileExistsError, OmegaConfBaseException) as exc:
            # config and data errors (DataError is a ValueError): one line, exit 2, no empty run folder
            failures.append(config_error_line(exc))
            print(f"error: {failures[-1]}", file=sys.stderr)
            remove_if_only_hydra(output_dir)
            if os.environ.get("SUBMITIT_EXECUTOR"):  # a launcher's job: fail it, so that the sweep reports it
                raise
            return
        if output_dir.resolve() != run_dir.resolve():  # e.g. a torchrun rank > 0 whose Hydra folder got a
            remove_if_only_hydra(output_dir)  # later timestamp than rank 0's run folder
        if _rank() == 0:
            print(f"[train] finished: {run_dir}")

    saved = sys.argv
    sys.argv = ["python -m dentate_research train", *argv]
    try:
        _train()
    except SystemExit as exc:  # Hydra exits on errors (after printing them) and on --help
        code = int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return 2 if code == 1 and not started else code  # a Hydra override/compose error is a usage error
    finally:
        sys.argv = saved
    return 2 if failures else 0
