"""The default two-step model used when ``segment`` gets no ``--model``.

A two-step model folder holds two run directories (see the trained-model contract)::

    MODEL_DIR/localization/   model.json, checkpoints/best.pt, ...
    MODEL_DIR/segmentation/   model.json, checkpoints/best.pt, ...

:func:`default_model_dir` looks, in order, at

1. ``$DENTATE_RESEARCH_MODEL`` (a model folder chosen by the user),
2. the user cache ``$XDG_CACHE_HOME/dentate_research/default_model`` (``~/.cache/...``), where
   ``python -m dentate_research demo`` (or :func:`train_default_model`) puts the model it trains,
3. ``dentate_research/assets/default_model/`` (shipped inside the package, if present),

and otherwise raises a DataError that says how to create one. The default model is trained on the synthetic
phantom data only: it demonstrates the pipeline, it is not a clinical model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from dentate_research.data.io import DataError

MODEL_ENV = "DENTATE_RESEARCH_MODEL"
STAGE_DIRS = ("localization", "segmentation")


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


# Networks of the two-step recipe (README "Converged models"): a small localizer at 4 mm and a 4-level U-Net that
# segments at 1 mm on 64^3 patches of the localizer's crops.
DEFAULT_LOCALIZER = {"arch": "unet", "spacing_mm": 4.0, "patch_size": [32, 32, 32],
                     "arch_kwargs": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}}
DEFAULT_SEGMENTER = {"arch": "unet", "spacing_mm": 1.0, "patch_size": [64, 64, 64],
                     "arch_kwargs": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def config_group(group: str, name: str) -> dict[str, Any]:
    """A config group file of ``configs/`` with its ``defaults`` chain merged (OmegaConf only, no Hydra), e.g.
    ``config_group("augmentation", "domain_randomization")``: every default still lives in the YAML files."""
    from omegaconf import OmegaConf

    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise DataError(f"{path}: no config '{name}' in group '{group}'; choices: {choices}")
    raw = OmegaConf.load(path)
    merged = OmegaConf.create({})
    for entry in raw.get("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_":
            merged = OmegaConf.merge(merged, config_group(group, entry))
    own = OmegaConf.masked_copy(raw, [k for k in raw if k != "defaults"])
    return OmegaConf.to_container(OmegaConf.merge(merged, own), resolve=False)  # type: ignore[return-value]


def stage_config(manifest: Path, stage: str, run_dir: Path, spec: dict[str, Any], *, train_ids: list[str],
                 val_ids: list[str], epochs: int, iterations_per_epoch: int, seed: int = 0, device: str = "cpu",
                 batch_size: int = 2, lr: float | None = None, augmentation: dict[str, Any] | str | None = None,
                 label_scheme: str = "lateral", localizer_run: Path | None = None, label_rater: str = "true",
                 trainer: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete ``train_stage`` config (the groups of ``configs/train.yaml``) for one stage run.

    ``spec`` gives ``arch``, ``arch_kwargs``, ``spacing_mm`` and ``patch_size``; normalization, crop, inferer and
    trainer defaults come from ``configs/stage/*.yaml``, ``configs/inferer/default.yaml`` and
    ``configs/trainer/default.yaml``; ``augmentation`` is a dict or the name of a ``configs/augmentation`` file
    (default: ``default``). ``localizer_run`` (segmentation): cut train/validation crops with that localizer
    (``stage.crop.source=localizer``). ``trainer``: extra trainer keys (``patience``, ``max_minutes``, ...).
    """
    stage_yaml = config_group("stage", stage)
    crop = dict(stage_yaml["crop"])
    if stage == "segmentation" and localizer_run is not None:
        crop.update({"source": "localizer", "localizer_run": str(localizer_run)})
    if isinstance(augmentation, str) or augmentation is None:
        augmentation = config_group("augmentation", augmentation or "default")
        if stage == "localization":
            augmentation["lr_flip"] = "plain"  # the cerebellum mask has no sides
    trainer_cfg = {**config_group("trainer", "default"), "epochs": epochs, "iterations_per_epoch": iterations_per_epoch,
                   "val_every": epochs, "val_iterations": 1, "batch_size": batch_size, "foreground_prob": 0.5,
                   "device": device, **(trainer or {})}
    trainer_cfg["optimizer"] = {**trainer_cfg["optimizer"], **({"lr": lr} if lr is not None else {})}
    return {
        "seed": seed,
        "arch": {"name": spec["arch"], "kwargs": dict(spec["arch_kwargs"])},
        "data": {"name": "manifest", "manifest": str(manifest), "root": str(Path(manifest).parent),
                 "label_rater": label_rater, "generate_if_missing": None},
        "stage": {"name": stage, "spacing_mm": spec["spacing_mm"], "patch_size": list(spec["patch_size"]),
                  "label_rater": label_rater, "label_scheme": label_scheme,
                  "normalization": dict(stage_yaml["normalization"]), "crop": crop},
        "split": {"name": "explicit", "train": list(train_ids), "val": list(val_ids)},
        "trainer": trainer_cfg,
        "augmentation": augmentation,
        "inferer": config_group("inferer", "default"),
        "logger": {"wandb": {"enabled": False, "mode": "disabled"}},
        "paths": {"run_dir": str(run_dir), "runs_dir": str(Path(run_dir).parent)},
    }


def train_two_step_model(out_dir: Path | str, manifest: Path | str, *, localizer: dict[str, Any] | None = None,
                         segmenter: dict[str, Any] | None = None, train_ids: list[str] | None = None,
                         val_ids: list[str] | None = None, epochs: int = 10, iterations_per_epoch: int = 20,
                         seed: int = 0, device: str = "cpu", lr: float | None = None,
                         augmentation: dict[str, Any] | str | None = None, label_scheme: str = "lateral",
                         crops_from_localizer: bool = False, localizer_epochs: int | None = None,
                         trainer: dict[str, Any] | None = None, label_rater: str = "true",
                         stage_minutes: dict[str, float] | None = None,
                         segmenter_trainer: dict[str, Any] | None = None) -> Path:
    """Train a localizer and a segmenter into ``out_dir/localization`` and ``out_dir/segmentation``.

    Args:
        out_dir: model folder (created).
        manifest: phantom/user manifest with ``label_true`` (or rater) and ``cerebellum`` columns.
        localizer, segmenter: stage specs (``arch``, ``arch_kwargs``, ``spacing_mm``, ``patch_size``);
            default :data:`DEFAULT_LOCALIZER` / :data:`DEFAULT_SEGMENTER`.
        train_ids, val_ids: case IDs (default: the last subject validates, every other case trains).
        epochs, iterations_per_epoch: per-stage budget (batches of random patches); ``localizer_epochs``
            overrides the localizer's epochs.
        lr: learning rate (default: the architecture's recommendation; poly decay).
        augmentation: segmentation augmentation (dict or ``configs/augmentation`` name; default ``default``).
        label_scheme: ``lateral`` (0/1/2) or ``merged`` (one DN class, sides from world x).
        crops_from_localizer: train and validate the segmenter on the crops of the localizer just trained.
        trainer: extra trainer keys for both stages (``patience``, ``min_delta``, ``max_minutes``, ``val_every``).
        stage_minutes: wall-clock budget per stage in minutes (``{"localization": .., "segmentation": ..}``).
        segmenter_trainer: trainer keys for the segmentation stage only (e.g. ``batch_size``, ``foreground_prob``).
    """
    from dentate_research.data.manifest import read_manifest
    from dentate_research.training import train_stage

    out_dir = Path(out_dir)
    manifest = Path(manifest)
    if train_ids is None:
        cases = read_manifest(manifest)
        val_subject = cases[-1].subject  # validation = the last subject's scans (subject-level, no leakage)
        val_ids = [c.case_id for c in cases if c.subject == val_subject] if val_ids is None else val_ids
        train_ids = [c.case_id for c in cases if c.case_id not in set(val_ids)]
    for stage, spec in (("localization", localizer or DEFAULT_LOCALIZER),
                        ("segmentation", segmenter or DEFAULT_SEGMENTER)):
        is_seg = stage == "segmentation"
        cfg = stage_config(manifest, stage, out_dir / stage, spec, train_ids=train_ids, val_ids=list(val_ids or []),
                           epochs=epochs if is_seg or localizer_epochs is None else localizer_epochs,
                           iterations_per_epoch=iterations_per_epoch, seed=seed, device=device, lr=lr,
                           augmentation=augmentation if is_seg or isinstance(augmentation, dict) else None,
                           label_scheme=label_scheme,
                           localizer_run=out_dir / "localization" if is_seg and crops_from_localizer else None,
                           trainer={**(trainer or {}), **((segmenter_trainer or {}) if is_seg else {}),
                                    **({"max_minutes": stage_minutes[stage]}
                                       if stage_minutes and stage in stage_minutes else {})},
                           label_rater=label_rater)
        train_stage(cfg)
    (out_dir / "README.txt").write_text(
        "Two-step dentate nucleus model (localization/ + segmentation/ run directories) trained on "
        f"{manifest} by dentate_research.inference.default_model.train_two_step_model.\n"
        "Synthetic phantom training data: for demonstration, not for clinical use.\n")
    return out_dir


def train_default_model(out_dir: Path | str | None = None, data_dir: Path | str | None = None, *,
                        manifest: Path | str | None = None, epochs: int = 10, iterations_per_epoch: int = 20,
                        seed: int = 0, device: str = "cpu", overwrite: bool = False) -> Path:
    """Train the tiny default two-step model and return its folder (``out_dir``, default: the user cache).

    Args:
        out_dir: model folder to create (gets ``localization/`` and ``segmentation/``).
        data_dir: phantom data folder; generated with the ``small`` preset if it has no ``manifest.tsv``.
        manifest: an existing manifest to train on instead of ``data_dir`` (needs a cerebellum column).
        epochs, iterations_per_epoch: training budget per stage (batches of random patches).
        seed: seed of data generation and training.
        device: ``cpu`` or ``cuda``.
        overwrite: replace an existing model folder.
    """
    out_dir = Path(out_dir) if out_dir is not None else user_model_dir()
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir}: model folder exists; pass overwrite=True to retrain it")
        shutil.rmtree(out_dir)
    if manifest is None:
        if data_dir is None:
            raise ValueError("give data_dir (phantoms are generated there if absent) or manifest")
        data_dir = Path(data_dir)
        manifest = data_dir / "manifest.tsv"
        if not manifest.is_file():
            from dentate_research.data.phantom import generate_dataset

            manifest = generate_dataset(data_dir, preset="small", seed=seed)
    return train_two_step_model(out_dir, manifest, epochs=epochs, iterations_per_epoch=iterations_per_epoch,
                                seed=seed, device=device)


def install_model(model_dir: Path | str, dest: Path | str | None = None, *, overwrite: bool = False) -> Path:
    """Copy what inference needs from a two-step model folder (model cards, configs, metrics, the card's
    checkpoint only) to ``dest`` (default: the user cache, where :func:`default_model_dir` finds it)."""
    import json

    src = Path(model_dir)
    if not is_model_dir(src):
        raise DataError(f"{src}: not a two-step model folder (needs localization/model.json and "
                        "segmentation/model.json)")
    dest = Path(dest) if dest is not None else user_model_dir()
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{dest}: exists; pass overwrite=True to replace it")
        shutil.rmtree(dest)
    for stage in STAGE_DIRS:
        card = json.loads((src / stage / "model.json").read_text())
        needed = ["model.json", "config.yaml", "run_info.json", "metrics.csv", card["checkpoint"]]
        if card.get("framework") == "nnunet":  # nnU-Net's predictor also reads its plans and dataset.json
            needed += [card["nnunet"]["plans"], card["nnunet"]["dataset_json"]]
        for name in needed:
            if (src / stage / name).is_file():
                (dest / stage / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / stage / name, dest / stage / name)
    if (src / "README.txt").is_file():
        shutil.copy2(src / "README.txt", dest / "README.txt")
    return dest
