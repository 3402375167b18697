"""``train_stage(cfg) -> run_dir``: train one stage (localization or segmentation) with any registered network.

Usable without Hydra: ``cfg`` is a nested dict / OmegaConf config with the groups of ``configs/train.yaml``
(arch, data, stage, split, trainer, augmentation, inferer, logger, paths, seed). Everything except ``arch`` -
split, preprocessing, patch sampling, iteration budget, inferer, postprocessing - is shared by all networks, and
the final validation of every run goes through the same :class:`~dentate_research.training.artifacts.StageModel`
path that inference uses.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..data.io import DataError
from ..data.manifest import Case, read_manifest
from ..models import available_architectures, get_arch, validate_patch_size
from .artifacts import ModelCard, load_stage_model, plot_training_curve, resolve_device, write_run_info
from .augmentation import AugmentationSettings
from .crops import min_crop_from_patch
from .inferer import InfererSettings
from .loggers import RunLogger
from .monai_loop import LoopSettings, train_monai
from .preprocessing import STAGES, median_spacing, prepare_samples, stage_classes
from .validation import stage_metrics

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def missing_arch_message() -> str:
    choices = available_architectures()
    return ("no architecture selected: add +arch=NAME, e.g. 'python -m dentate_research train +arch=nnunet'; "
            f"choices: {', '.join(choices)}")


def _as_config(cfg: Mapping[str, Any] | DictConfig) -> DictConfig:
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    if "arch" not in conf or conf.arch is None or not conf.arch.get("name"):
        raise ValueError(missing_arch_message())
    get_arch(conf.arch.name)  # unknown name -> ValueError listing the choices
    for key in ("data", "stage", "split", "trainer", "augmentation", "inferer", "logger", "paths"):
        if key not in conf:
            raise ValueError(f"config is missing the '{key}' group; see {CONFIG_DIR}/train.yaml")
    return conf


def load_cases(data_cfg: DictConfig) -> list[Case]:
    """Read the manifest; phantom data configs may generate the data set when it is absent (explicit flag)."""
    manifest = Path(str(data_cfg.manifest)).expanduser()
    if not manifest.exists():
        gen = data_cfg.get("generate_if_missing")
        if not gen:
            raise DataError(f"{manifest}: manifest not found (data.manifest); create the data set first, e.g. "
                            "'python -m dentate_research make-data'")
        from ..data.phantom import generate_dataset

        print(f"[train] {manifest} not found: generating phantom preset '{gen.preset}' (seed {gen.seed})")
        manifest = generate_dataset(manifest.parent, preset=str(gen.preset), seed=int(gen.seed),
                                    n_jobs=int(gen.get("n_jobs", 1)))
    return read_manifest(manifest)


def resolve_split(split_cfg: DictConfig, cases: list[Case], seed: int) -> tuple[list[str], list[str], str]:
    """Train/validation case IDs: explicit lists (``split.train``/``split.val``) or a fold of a split file."""
    known = {c.case_id for c in cases}
    if split_cfg.get("train") is not None:
        train, val, name = list(split_cfg.train), list(split_cfg.get("val") or []), "explicit"
    else:
        from ..data.splits import load_split, make_splits, write_splits

        path = Path(str(split_cfg.file)).expanduser()
        if not path.exists():
            if not split_cfg.get("create_if_missing", False):
                raise DataError(f"{path}: split file not found (split.file); make one with 'python -m "
                                "dentate_research make-splits' or pass split=explicit split.train=[...]")
            splits = make_splits(cases, n_folds=int(split_cfg.n_folds), test_fraction=float(split_cfg.test_fraction),
                                 external_sites=list(split_cfg.get("external_sites") or []), seed=int(seed))
            write_splits(splits, path.parent)
            print(f"[train] wrote subject-level splits to {path.parent}")
        split = load_split(path, split_cfg.fold)
        train, val, name = list(split.train), list(split.val), split.name
    unknown = sorted((set(train) | set(val)) - known)
    if unknown:
        raise DataError(f"split '{name}': case IDs {unknown[:5]} are not in the manifest ({len(known)} cases)")
    if not train:
        raise DataError(f"split '{name}': empty training set")
    subject = {c.case_id: c.subject for c in cases}
    leak = sorted({subject[i] for i in train} & {subject[i] for i in val})
    if leak and name != "all":
        raise DataError(f"split '{name}': subject(s) {leak[:5]} appear in both train and validation")
    return train, val, name


def default_run_dir(cfg: DictConfig) -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return Path(str(cfg.paths.runs_dir)) / str(cfg.stage.name) / str(cfg.arch.name) / stamp


def _spacing(value: Any, train_cases: list[Case]) -> list[float]:
    if value is None:
        return list(median_spacing(train_cases))
    plain = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
    return [float(v) for v in np.broadcast_to(np.asarray(plain, dtype=float), (3,))]


def train_stage(cfg: Mapping[str, Any] | DictConfig) -> Path:
    """Train the stage described by ``cfg`` and return its run directory (see the module docstring)."""
    t_start = time.perf_counter()
    cfg = _as_config(cfg)
    stage = str(cfg.stage.name)
    if stage not in STAGES:
        raise ValueError(f"stage.name '{stage}' unknown; allowed: {list(STAGES)}")
    arch = str(cfg.arch.name)
    spec = get_arch(arch)
    arch_kwargs = OmegaConf.to_container(cfg.arch.get("kwargs") or {}, resolve=True)
    patch_size = [int(p) for p in cfg.stage.patch_size]
    validate_patch_size(arch, patch_size, arch_kwargs)  # early, before any data is read
    device = resolve_device(str(cfg.trainer.device))
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    seed = int(cfg.seed)
    from monai.utils import set_determinism

    set_determinism(seed=seed)

    run_dir = Path(str(cfg.paths.run_dir)) if cfg.paths.get("run_dir") else default_run_dir(cfg)
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    # data, split and stage samples (identical for every architecture)
    t0 = time.perf_counter()
    cases = load_cases(cfg.data)
    train_ids, val_ids, split_name = resolve_split(cfg.split, cases, seed)
    by_id = {c.case_id: c for c in cases}
    train_cases, val_cases = [by_id[i] for i in train_ids], [by_id[i] for i in val_ids]
    spacing = _spacing(cfg.stage.get("spacing_mm"), train_cases)
    normalization = OmegaConf.to_container(cfg.stage.normalization, resolve=True)
    crop_cfg = OmegaConf.to_container(cfg.stage.crop, resolve=True) if cfg.stage.get("crop") else {}
    rater = cfg.stage.label_rater
    rater = "true" if rater is True else str(rater)  # YAML/Hydra read an unquoted `true` as a boolean
    label_scheme = str(cfg.stage.get("label_scheme") or "lateral")
    classes = stage_classes(stage, label_scheme)
    localizer = None
    if stage == "segmentation" and crop_cfg.get("source") == "localizer":
        loc_run = crop_cfg.get("localizer_run")
        if not loc_run:
            raise DataError("stage.crop.source=localizer needs stage.crop.localizer_run=RUN_DIR (a trained "
                            "localization run): crops are then cut exactly as inference cuts them")
        localizer = load_stage_model(Path(str(loc_run)).expanduser(), device=device)
        if localizer.card.stage != "localization":
            raise DataError(f"stage.crop.localizer_run={loc_run}: a '{localizer.card.stage}' run, expected a "
                            "localization run")
        crop_cfg["localizer_run"] = str(Path(str(loc_run)).expanduser().resolve())
        crop_cfg.setdefault("margin_mm", localizer.card.crop_margin_mm)
    min_crop = min_crop_from_patch(patch_size, spacing) if stage == "segmentation" else None
    common = {"spacing_mm": spacing, "normalization": normalization, "crop_cfg": crop_cfg, "label_rater": rater,
              "localizer": localizer, "min_crop_mm": min_crop}
    train_samples = prepare_samples(train_cases, stage, training=True, seed=seed, desc="train cases", **common)
    val_samples = prepare_samples(val_cases, stage, training=False, seed=seed, desc="val cases", **common)
    del localizer
    t_prepare = time.perf_counter() - t0

    inferer = InfererSettings.from_dict(OmegaConf.to_container(cfg.inferer, resolve=True), patch_size)
    # one merged DN class holds both nuclei (two components): the largest-component step runs per side after the
    # world-x side assignment (data.postprocess.postprocess_dn_labels), never on the merged class
    merged_dn = stage == "segmentation" and len(classes) == 2
    postprocess = bool(cfg.inferer.get("largest_component_per_class", True)) and not merged_dn
    margin_mm = float(crop_cfg.get("margin_mm", 10.0))
    card = ModelCard(
        stage=stage, arch=arch, framework=spec.framework, arch_kwargs=dict(arch_kwargs), classes=list(classes),
        target_spacing_mm=spacing, patch_size=patch_size, normalization=dict(normalization),
        inferer=inferer.to_dict(), postprocess={"largest_component_per_class": postprocess},
        localization_target="cerebellum" if stage == "localization" else None, crop=dict(crop_cfg),
        label_rater=rater, train_cases=train_ids, val_cases=val_ids, seed=seed,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    lcfg = cfg.logger
    wandb_cfg = lcfg.get("wandb") or {}
    logger = RunLogger(run_dir, resolved, wandb_enabled=bool(wandb_cfg.get("enabled", False)),
                       wandb_mode=str(wandb_cfg.get("mode", "offline")),
                       project=str(wandb_cfg.get("project", "dentate_research")),
                       run_name=f"{stage}_{arch}_{split_name}",
                       tags=[stage, arch, split_name])
    t0 = time.perf_counter()
    tr = cfg.trainer
    opt = tr.get("optimizer") or {}
    loop = LoopSettings(epochs=int(tr.epochs), iterations_per_epoch=int(tr.iterations_per_epoch),
                        batch_size=int(tr.batch_size), val_every=int(tr.val_every), optimizer=opt.get("name"),
                        lr=opt.get("lr"), weight_decay=opt.get("weight_decay"), momentum=opt.get("momentum"),
                        lr_schedule=str(tr.lr_schedule), warmup_iterations=int(tr.get("warmup_iterations", 0)),
                        grad_clip=tr.get("grad_clip"), amp=bool(tr.amp), foreground_prob=float(tr.foreground_prob),
                        resume=bool(tr.get("resume", False)), patience=tr.get("patience"),
                        min_delta=float(tr.get("min_delta") or 0.0), max_minutes=tr.get("max_minutes"))
    loop_result: dict[str, Any] = {}
    try:
        if spec.framework == "monai":
            loop_result = train_monai(
                        run_dir=run_dir, stage=stage, arch=arch, arch_kwargs=dict(arch_kwargs), classes=classes,
                        train_samples=train_samples, val_samples=val_samples, patch_size=patch_size, loop=loop,
                        augmentation=AugmentationSettings.from_dict(OmegaConf.to_container(cfg.augmentation,
                                                                                          resolve=True)),
                        inferer=inferer, postprocess=postprocess, margin_mm=margin_mm, device=device, logger=logger,
                        seed=seed)
        else:
            from .nnunet_runner import train_nnunet

            aug = cfg.augmentation
            mirroring = bool(aug.get("enabled", True)) and bool(aug.get("nnunet_mirroring", True))
            lateral = stage == "segmentation" and len(classes) >= 3
            lr_swap = (float(aug.get("lr_flip_prob", 0.5)) if aug.get("enabled", True)
                       and aug.get("lr_flip") == "swap_labels" and lateral else 0.0)
            if stage == "segmentation" and not lateral:  # merged scheme: nnU-Net learns one DN class
                train_samples = [merged_sample(s) for s in train_samples]
                val_nn = [merged_sample(s) for s in val_samples]
            else:
                val_nn = val_samples
            nn = train_nnunet(run_dir, train_samples, val_nn, classes, patch_size=patch_size,
                              batch_size=loop.batch_size, epochs=loop.epochs,
                              iterations_per_epoch=loop.iterations_per_epoch,
                              val_iterations=int(tr.get("val_iterations", 5)), arch_kwargs=dict(arch_kwargs),
                              device=device, seed=seed, initial_lr=opt.get("lr"),
                              allow_mirroring=mirroring, lr_swap_probability=lr_swap,
                              mirror_lr_axis=not lateral and stage == "segmentation", resume=loop.resume)
            history = nn.pop("history")
            for e, loss in enumerate(history["train_losses"]):
                row: dict[str, Any] = {"epoch": e + 1, "iteration": (e + 1) * loop.iterations_per_epoch,
                                       "train_loss": loss}
                for key, name in (("val_losses", "nnunet_val_loss"), ("mean_fg_dice", "nnunet_pseudo_dice"),
                                  ("lrs", "lr")):
                    if e < len(history[key]):
                        row[name] = history[key][e]
                logger.log(row)
            card.nnunet = nn
            card.checkpoint = nn["checkpoints"]["best"]
            card.arch_kwargs = {**dict(arch_kwargs), "patch_size_nnunet": nn["patch_size_nnunet"],
                                "spacing_nnunet": nn["spacing_nnunet"]}
        t_train = time.perf_counter() - t0
        card.to_json(run_dir / "model.json")

        # final validation through the inference path (StageModel), identical for every architecture
        t0 = time.perf_counter()
        final: dict[str, Any] = {}
        if val_samples:
            model = load_stage_model(run_dir, device=device)
            final = stage_metrics(stage, lambda s: model.predict(s.raw_volume()), val_samples, margin_mm)
            logger.log({"epoch": loop_result.get("epochs_run", loop.epochs),
                        "iteration": loop_result.get("iterations_run", loop.epochs * loop.iterations_per_epoch),
                        "phase": "final",
                        **{k: v for k, v in final.items() if k != "per_case"}})
            logger.summary({f"final_{k}": v for k, v in final.items() if k != "per_case"})
        card.metrics = final
        card.to_json(run_dir / "model.json")
        t_eval = time.perf_counter() - t0
        summary = training_summary(logger.rows, loop_result)
        logger.summary(summary)
    finally:
        logger.finish()
    plot_training_curve([r for r in logger.rows if r.get("phase") != "final"], run_dir / "training_curve.png",
                        f"{stage} / {arch} / {split_name}")
    write_run_info(run_dir, seed=seed, device=str(device),
                   timings={"prepare": t_prepare, "train": t_train, "final_validation": t_eval,
                            "total": time.perf_counter() - t_start},
                   extra={"split": split_name, "n_train": len(train_ids), "n_val": len(val_ids), "stage": stage,
                          "arch": arch, "label_scheme": label_scheme if stage == "segmentation" else None,
                          "training_summary": summary})
    return run_dir


DICE_MILESTONES = (0.5, 0.7, 0.8, 0.85, 0.88, 0.9)


def training_summary(rows: list[dict[str, Any]], loop_result: Mapping[str, Any]) -> dict[str, Any]:
    """Time-to-Dice and plateau facts of a run from its metrics rows (segmentation: mean DN Dice).

    ``time_to_dice``: for each milestone the first validation reaching it (iteration, wall_time_s); ``best``: the
    best validation (value, iteration, wall time); ``stop_reason``: ``budget`` | ``plateau`` | ``time_budget``.
    """
    key = "val_dice_mean" if any(r.get("val_dice_mean") is not None for r in rows) else "val_dice_cerebellum"
    validated = [r for r in rows if r.get(key) is not None and r.get("phase") != "final"]
    reached: dict[str, Any] = {}
    for milestone in DICE_MILESTONES:
        first = next((r for r in validated if float(r[key]) >= milestone), None)
        reached[f"{milestone:g}"] = None if first is None else {"iteration": first.get("iteration"),
                                                                "wall_time_s": first.get("wall_time_s")}
    best = max(validated, key=lambda r: float(r[key]), default=None)
    return {"metric": key, "time_to_dice": reached,
            "best": None if best is None else {"value": float(best[key]), "iteration": best.get("iteration"),
                                               "wall_time_s": best.get("wall_time_s")},
            "stop_reason": loop_result.get("stop_reason", "budget"),
            "iterations_run": loop_result.get("iterations_run"), "epochs_run": loop_result.get("epochs_run")}


def merged_sample(sample: Any) -> Any:
    """A copy of a segmentation sample whose DN labels 1/2 are merged into one class (label 1)."""
    from dataclasses import replace

    return replace(sample, label=(sample.label > 0).astype(np.uint8))
