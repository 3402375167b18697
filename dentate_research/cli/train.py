"""``train``: train one stage with Hydra configs from the repository's top-level ``configs/`` folder.

Examples::

    python -m dentate_research train +arch=nnunet
    python -m dentate_research train +arch=unet stage=localization trainer=smoke logger=none
    python -m dentate_research train -m experiment=benchmark_small +arch=unet,segresnet,nnunet
    python -m dentate_research train -m hydra/launcher=slurm +arch=unetr,swin_unetr trainer=paper

``+arch`` is required (the group has no default); ``arch=NAME`` without the plus is accepted too.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_ARCH_OVERRIDE = re.compile(r"^\+{0,2}arch=")
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")


def available_arch_configs() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "arch").glob("*.yaml"))


def missing_arch_message() -> str:
    return ("error: no architecture selected. Add +arch=NAME, e.g.\n"
            "  python -m dentate_research train +arch=nnunet\n"
            f"choices: {', '.join(available_arch_configs())}")


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

    import hydra
    from omegaconf import DictConfig, open_dict

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def _train(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from dentate_research.training.api import train_stage

        if cfg.paths.get("run_dir") is None:
            with open_dict(cfg):
                cfg.paths.run_dir = HydraConfig.get().runtime.output_dir
        run_dir = train_stage(cfg)
        print(f"[train] finished: {run_dir}")

    saved = sys.argv
    sys.argv = ["python -m dentate_research train", *argv]
    try:
        _train()
    except SystemExit as exc:  # Hydra exits on errors (after printing them) and on --help
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0
