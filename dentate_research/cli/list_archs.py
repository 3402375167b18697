"""``python -m dentate_research list-archs``: the architectures ``train arch=NAME`` accepts, from the packaged
``configs/arch`` group (name, what it is, its keyword arguments). Reads YAML only: no torch, no MONAI, instant."""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from dentate_research.schema import CONFIG_DIR


def arch_configs() -> dict[str, dict]:
    """``{name: {"about": first comment line, "kwargs": {...}}}`` of every file in ``configs/arch``."""
    found: dict[str, dict] = {}
    for path in sorted((CONFIG_DIR / "arch").glob("*.yaml")):
        comments = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
        about = comments[0].split(". ")[0].rstrip(".") if comments else ""
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        found[path.stem] = {"about": about, "kwargs": cfg.get("kwargs", {})}  # type: ignore[union-attr]
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args: argparse.Namespace) -> int:
    archs = arch_configs()
    if args.json:
        print(json.dumps(archs, indent=1))
        return 0
    width = max(len(name) for name in archs)
    for name, info in archs.items():
        print(f"{name:<{width}}  {info['about']}")
        print(f"{'':<{width}}  kwargs: {json.dumps(info['kwargs'])}")
    print(f"\ntrain with: python -m dentate_research train arch=NAME  (or +arch=NAME); {len(archs)} architectures")
    return 0
