"""``train``: train one stage with Hydra configs from the repository's top-level ``configs/`` folder.

Examples::

    python -m dentate_research train +arch=nnunet
    python -m dentate_research train +arch=unet stage=localization trainer=smoke logger=none
    python -m dentate_research train -m experiment=benchmark_small +arch=unet,segresnet,nnunet
    python -m dentate_research train -m hydra/launcher=slurm +arch=unetr,swin_unetr trainer=paper

``+arch`` is required (the group has no default); ``arch=NAME`` without the plus is accepted too.

Run folders: an existing non-empty run folder (``hydra.run.dir=R`` or ``paths.run_dir=R``) is refused before
Hydra writes anything into it, unless ``trainer.resume=true`` (which needs a checkpoint there); two runs that start
in the same second get distinct folders (``<timestamp>``, ``<timestamp>_2``, ...). Config and data errors (unknown
fold, patch size not divisible, manifest or split file not found, ...) end with exit 2 and one line naming the key,
the value and what is allowed, without a traceback and without leaving a run folder behind.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from dentate_research.training.rundir import RunDirError, check_run_dir, remove_if_only_hydra

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_ARCH_OVERRIDE = re.compile(r"^\+{0,2}arch=")
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")


def available_arch_configs() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "arch").glob("*.yaml"))


def missing_arch_message() -> str:
    return ("error: no architecture selected. Add +arch=NAME, e.g.\n"
            "  python -m dentate_research train +arch=nnunet\n"
            f"choices: {', '.join(available_arch_configs())}")


_RUN_DIR_KEYS = ("hydra.run.dir", "paths.run_dir")
_UNIQUE_OFF_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "paths.run_dir")
_RESUME = re.compile(r"^\+{0,2}trainer\.resume=(?i:true|1|yes)$")


def _override(argv: list[str], key: str) -> str | None:
    """The value of ``key=VALUE`` (optionally with ``+``/``++``) in ``argv``, quotes removed; None if absent."""
    pattern = re.compile(rf"^\+{{0,2}}{re.escape(key)}=(.*)$")
    for a in argv:
        m = pattern.match(a)
        if m:
            return m.group(1).strip("'\"")
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    try:
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(exc, OmegaConfBaseException):  # "<message>\n    full_key: ...": the first line says it
            text = text.splitlines()[0] if text else type(exc).__name__
    except ImportError:  # pragma: no cover
        pass
    return " ".join(text.split())


def normalize_argv(argv: list[str]) -> list[str]:
    """``arch=X`` -> ``+arch=X`` (arch has no default, so Hydra would reject the plain override)."""
    return ["+" + a if a.startswith("arch=") else a for a in argv]


def run_hydra(argv: list[str]) -> int:
    """Run the Hydra app with ``argv`` (the verb already removed); returns the exit code."""
    if not CONFIG_DIR.is_dir():
        print(f"error: config folder {CONFIG_DIR} not found (the train verb needs a source checkout)",
              file=sys.stderr)
        return 2
    argv = normalize_argv(list(argv))
    if not any(_ARCH_OVERRIDE.match(a) for a in argv) and not any(a in _INFO_FLAGS for a in argv):
        print(missing_arch_message(), file=sys.stderr)
        return 2
    known = available_arch_configs()
    for a in argv:
        if _ARCH_OVERRIDE.match(a):
            bad = [n for n in a.split("=", 1)[1].split(",") if n and n not in known]
            if bad:
                print(f"error: unknown architecture {bad}; choices: {', '.join(known)}", file=sys.stderr)
                return 2

    multirun = any(a in ("-m", "--multirun") for a in argv)
    resume = any(_RESUME.match(a) for a in argv)
    if not multirun and not resume and not any(a in _INFO_FLAGS for a in argv):
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

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def _train(cfg: DictConfig) -> None:
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
            failures.append(_one_line(exc))
            print(f"error: {failures[-1]}", file=sys.stderr)
            remove_if_only_hydra(output_dir)
            return
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
