"""The default two-step model used when ``segment`` gets no ``--model``.

A two-step model folder holds two run directories (see the trained-model contract)::

    MODEL_DIR/localization/   model.json, checkpoints/best.pt, ...
    MODEL_DIR/segmentation/   model.json, checkpoints/best.pt, ...

:func:`default_model_dir` looks, in order, at

1. ``$DENTATE_RESEARCH_MODEL`` (a model folder chosen by the user),
2. the user cache ``$XDG_CACHE_HOME/dentate_research/default_model`` (``~/.cache/...``), where
   ``python -m dentate_research demo --install`` (or :func:`install_model`) puts a
   model,
3. ``dentate_research/assets/default_model/`` (shipped inside the package, if present),

and otherwise raises a DataError that says how to create one. The default model is trained on the synthetic
phantom data only: it demonstrates the pipeline, it is not a clinical model. Training a two-step model folder is
:func:`dentate_research.training.two_step.train_two_step_model`; :func:`install_model` is the one way to copy a
trained model to where inference finds it (``demo --install`` and ``benchmarks/package_default_model.py`` use it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dentate_research.data.io import DataError
from dentate_research.runtime.stage_model import model_files

MODEL_ENV = "DENTATE_RESEARCH_MODEL"
STAGE_DIRS = ("localization", "segmentation")
__all__ = ["MODEL_ENV", "default_model_dir", "install_model", "is_model_dir", "packaged_model_dir", "user_model_dir"]


def packaged_model_dir() -> Path:
    """``dentate_research/assets/default_model`` (may not exist)."""
    return Path(__file__).resolve().parents[1] / "assets" / "default_model"


def user_model_dir() -> Path:
    """Per-user cache folder where the trained default model is stored (may not exist yet)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dentate_research" / "default_model"


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds ``localization/model.json`` and ``segmentation/model.json``."""
    return all((Path(path) / stage / "model.json").is_file() for stage in STAGE_DIRS)


def default_model_dir() -> Path:
    """Folder of the default two-step model, or a DataError explaining how to create one."""
    env = os.environ.get(MODEL_ENV)
    if env:
        if not is_model_dir(Path(env)):
            raise DataError(f"${MODEL_ENV}={env}: not a two-step model folder (needs localization/model.json and "
                            "segmentation/model.json)")
        return Path(env)
    for candidate in (user_model_dir(), packaged_model_dir()):
        if is_model_dir(candidate):
            return candidate
    raise DataError(
        "no default model is installed (looked in $" + MODEL_ENV + f", {user_model_dir()} and "
        f"{packaged_model_dir()}). Create it offline in a few minutes on CPU with 'python -m dentate_research demo' "
        "(generates phantoms and trains a tiny two-step model), or pass --model MODEL_DIR (a folder with "
        "localization/ and segmentation/ run directories) or --localizer RUN_DIR --segmenter RUN_DIR.")


def install_model(model_dir: Path | str | None, dest: Path | str | None = None, *, overwrite: bool = False,
                  localizer: Path | str | None = None, segmenter: Path | str | None = None) -> Path:
    """Copy what inference needs (model cards, configs, metrics, the card's checkpoint only; nnU-Net plans and
    dataset.json) into a two-step model folder ``dest`` (default: the user cache, where :func:`default_model_dir`
    finds it) and return ``dest``.

    Args:
        model_dir: a two-step model folder (``localization/`` + ``segmentation/``; its README.txt is copied too),
            or None when ``localizer`` and ``segmenter`` name the two stage run folders.
        dest: target model folder; an existing non-empty one is replaced only with ``overwrite``.
        localizer, segmenter: stage run folders (each with ``model.json``), instead of ``model_dir``.
    """
    import json

    if model_dir is not None:
        if localizer is not None or segmenter is not None:
            raise ValueError("give either model_dir or localizer and segmenter, not both")
        src = Path(model_dir)
        if not is_model_dir(src):
            raise DataError(f"{src}: not a two-step model folder (needs localization/model.json and "
                            "segmentation/model.json)")
        runs = {stage: src / stage for stage in STAGE_DIRS}
        readme: Path | None = src / "README.txt"
    else:
        if localizer is None or segmenter is None:
            raise ValueError("give model_dir, or both localizer and segmenter run folders")
        runs = {"localization": Path(localizer), "segmentation": Path(segmenter)}
        for stage, run in runs.items():
            if not (run / "model.json").is_file():
                raise DataError(f"{run}: not a {stage} run folder (no model.json)")
        readme = None
    dest = Path(dest) if dest is not None else user_model_dir()
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{dest}: exists; pass overwrite=True to replace it")
        shutil.rmtree(dest)
    for stage, run in runs.items():
        card = json.loads((run / "model.json").read_text())
        needed = ["model.json", "config.yaml", "run_info.json", "metrics.csv",
                  *model_files(card)]
        for name in needed:
            if (run / name).is_file():
                (dest / stage / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, dest / stage / name)
    if readme is not None and readme.is_file():
        shutil.copy2(readme, dest / "README.txt")
    return dest
