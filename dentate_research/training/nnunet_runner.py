"""Drive real nnU-Net v2 (fingerprint, plan, preprocess, train, predict) from Python.

The same prepared :class:`~dentate_research.training.preprocessing.StageSample` objects the MONAI loop uses are
written as an nnU-Net raw dataset inside the run directory (``run_dir/nnunet/{raw,preprocessed,results}``), so
nnU-Net sees exactly the crops and spacing of every other architecture. Then:

1. fingerprint + ``ExperimentPlanner`` (nnU-Net's own planning);
2. a custom plans configuration ``dentate`` inheriting ``3d_fullres`` sets the shared patch size, batch size and
   optionally fewer stages / features (short CPU runs) - no re-preprocessing needed;
3. preprocessing of ``3d_fullres`` (in-process, no worker pool);
4. our subject-level split written as ``splits_final.json`` (fold 0) - nnU-Net never prompts or invents a split;
5. :class:`DentateNnUNetTrainer` built directly (no lookup by name), iterations/epochs from the config, and
   left-right mirroring removed from training augmentation and from ``inference_allowed_mirroring_axes``;
   instead, like the MONAI loop, an optional left-right mirror that swaps labels 1 <-> 2.

Axis order: nnU-Net reads NIfTI with SimpleITK, i.e. arrays are (z, y, x); for our canonical RAS files the
left-right axis is the LAST array axis (before nnU-Net's ``transpose_forward``, which we account for).
Environment variables (nnUNet_raw/preprocessed/results, nnUNet_compile=f, nnUNet_n_proc_DA, nnUNet_def_n_proc)
are set by :func:`nnunet_environment` before any nnunetv2 module is imported.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.atomic import write_text_atomic
from ..data.io import DataError
from ..data.labels import swap_left_right_labels
from ..data.nnunet_export import dataset_folder_name as dataset_name
from ..data.nnunet_export import raw_dataset_folder, write_dataset_json, write_raw_case
from ..runtime.nnunet_model import load_nnunet_json as _load_json
from ..runtime.nnunet_model import nnunet_environment
from ..schema import arch_config_kwargs
from .preprocessing import StageSample

NNUNET_CONFIGURATION = "dentate"
PLANS_NAME = "nnUNetPlans"
_N_PROC_DA = "nnUNet_n_proc_DA"  # nnU-Net's variable name (mixed case)
CHECKPOINTS = {"best": "checkpoint_best.pth", "final": "checkpoint_final.pth"}


def _save_json(data: Any, path: Path | str, sort_keys: bool = True) -> None:
    """Write JSON as nnU-Net writes it (indent 4, sorted keys unless told), atomically."""
    write_text_atomic(path, json.dumps(data, indent=4, sort_keys=sort_keys))


def write_raw_dataset(raw_root: Path, dataset_id: int, name: str, samples: Sequence[StageSample],
                      classes: Sequence[str]) -> Path:
    """Write prepared samples in nnU-Net's raw layout (imagesTr/<id>_0000.nii.gz, labelsTr, dataset.json) with
    the writer of :mod:`dentate_research.data.nnunet_export`.

    Images are written before normalization (ppm); channel name "QSM" selects nnU-Net's own per-case z-score,
    which it also applies at inference to the raw volume a StageModel receives.
    """
    folder = raw_dataset_folder(raw_root, dataset_id, name)
    for s in samples:
        write_raw_case(folder, s.case_id, s.image if s.raw_image is None else s.raw_image, s.affine, s.label)
    write_dataset_json(folder, {c: i for i, c in enumerate(classes)}, len(samples),
                       "dentate_research stage samples (canonical RAS; nnU-Net LR axis = last)")
    return folder


def ras_to_nnunet_axes(values_xyz: Sequence[Any], transpose_forward: Sequence[int]) -> list[Any]:
    """Reorder a per-axis list from our (x, y, z) to nnU-Net's internal order (SimpleITK z, y, x, transposed)."""
    zyx = list(values_xyz)[::-1]
    return [zyx[i] for i in transpose_forward]


def lr_axis_in_nnunet(transpose_forward: Sequence[int]) -> int:
    """nnU-Net's (post-transpose) array axis that runs left-right (SimpleITK axis 2 = NIfTI i = RAS x)."""
    return list(transpose_forward).index(2)


def add_custom_configuration(plans: dict, patch_size_xyz: Sequence[int], batch_size: int,
                             n_stages: int | None = None, features_base: int | None = None,
                             max_features: int | None = None) -> dict:
    """Add the ``dentate`` configuration (inherits 3d_fullres) with the shared patch/batch and network size.

    Raises ValueError when the patch is not divisible by the network's total stride along some axis.
    """
    base = plans["configurations"]["3d_fullres"]
    arch = copy.deepcopy(base["architecture"])
    kw = arch["arch_kwargs"]
    planned = int(kw["n_stages"])
    patch = ras_to_nnunet_axes([int(p) for p in patch_size_xyz], plans["transpose_forward"])
    if n_stages is None:  # as many planned stages as the shared patch allows (divisible, >= 4 voxels deep down)
        n = planned
        while n > 2:
            stride = np.prod(np.asarray(kw["strides"][:n]), axis=0)
            if all(p % int(s) == 0 and p // int(s) >= 4 for p, s in zip(patch, stride, strict=True)):
                break
            n -= 1
    else:
        n = int(n_stages)
    if n < 2:
        raise ValueError(f"nnunet n_stages must be >= 2, got {n}")
    kernels = [list(k) for k in kw["kernel_sizes"]][:n]
    strides = [list(s) for s in kw["strides"]][:n]
    while len(kernels) < n:
        kernels.append([3, 3, 3])
        strides.append([2, 2, 2])
    feats = list(kw["features_per_stage"])[:n]
    while len(feats) < n:
        feats.append(feats[-1] * 2)
    if features_base is not None:
        cap = int(max_features) if max_features is not None else 320
        feats = [min(int(features_base) * 2 ** i, cap) for i in range(n)]
    elif max_features is not None:
        feats = [min(f, int(max_features)) for f in feats]

    def trim(values: Sequence[int], length: int) -> list[int]:
        values = list(values)[:length]
        return values + [values[-1]] * (length - len(values))

    kw.update({"n_stages": n, "features_per_stage": feats, "kernel_sizes": kernels, "strides": strides,
               "n_conv_per_stage": trim(kw["n_conv_per_stage"], n),
               "n_conv_per_stage_decoder": trim(kw["n_conv_per_stage_decoder"], n - 1)})
    total_stride = np.prod(np.asarray(strides), axis=0)
    bad = [int(p) for p, s in zip(patch, total_stride, strict=True) if p % int(s)]
    if bad:
        raise ValueError(f"nnunet: patch size {list(patch_size_xyz)} (nnU-Net axes {patch}) is not divisible by the "
                         f"network's total stride {total_stride.tolist()} ({n} stages); use multiples of "
                         f"{int(total_stride.max())} or fewer stages (arch.kwargs.n_stages)")
    plans["configurations"][NNUNET_CONFIGURATION] = {
        "inherits_from": "3d_fullres", "patch_size": patch, "batch_size": int(batch_size), "architecture": arch}
    return plans


def plan_and_preprocess(dataset_id: int, patch_size_xyz: Sequence[int], batch_size: int,
                        arch_kwargs: dict[str, Any], num_processes: int = 2) -> dict:
    """nnU-Net fingerprint + planning + 3d_fullres preprocessing; returns the plans with our configuration."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    from tqdm.auto import tqdm

    name = convert_id_to_dataset_name(dataset_id)
    DatasetFingerprintExtractor(dataset_id, num_processes, verbose=False).run(overwrite_existing=True)
    planner = ExperimentPlanner(dataset_id, preprocessor_name="DefaultPreprocessor", plans_name=PLANS_NAME)
    # the planner calls torch.set_num_threads(nnUNet_n_proc_DA): needs >= 1, and we restore the thread count
    threads, n_da = torch.get_num_threads(), os.environ.get(_N_PROC_DA)
    os.environ[_N_PROC_DA] = str(max(1, num_processes))
    try:
        planner.plan_experiment()
    finally:
        torch.set_num_threads(threads)
        if n_da is not None:
            os.environ[_N_PROC_DA] = n_da
    plans_file = Path(str(nnUNet_preprocessed)) / name / f"{PLANS_NAME}.json"
    plans = _load_json(plans_file)
    plans = add_custom_configuration(plans, patch_size_xyz, batch_size, arch_kwargs.get("n_stages"),
                                     arch_kwargs.get("features_base"), arch_kwargs.get("max_features"))
    _save_json(plans, plans_file, sort_keys=False)

    # preprocessing, in-process (nnU-Net's own run() would start a spawn pool for a handful of small cases)
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    dataset_json = _load_json(Path(str(nnUNet_preprocessed)) / name / "dataset.json")
    out_dir = Path(str(nnUNet_preprocessed)) / name / configuration.data_identifier
    out_dir.mkdir(parents=True, exist_ok=True)
    files = get_filenames_of_train_images_and_targets(str(Path(str(nnUNet_raw)) / name), dataset_json)
    preprocessor = configuration.preprocessor_class(verbose=False)
    for key in tqdm(sorted(files), desc="nnU-Net preprocessing", leave=False):
        preprocessor.run_case_save(str(out_dir / key), files[key]["images"], files[key]["label"], plans_manager,
                                   configuration, dataset_json)
    return plans


def _lr_swap_mirror_transform(lr_axis: int, probability: float = 0.5) -> Any:
    """batchgeneratorsv2 transform: mirror along nnU-Net's LR axis AND swap labels 1 <-> 2 (laterality-safe,
    :func:`dentate_research.data.labels.swap_left_right_labels`)."""
    from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

    class LeftRightSwapMirror(BasicTransform):
        def get_parameters(self, **data_dict: Any) -> dict:
            return {"flip": bool(torch.rand(1) < probability)}

        def _apply_to_image(self, img: torch.Tensor, **params: Any) -> torch.Tensor:
            return torch.flip(img, [lr_axis + 1]) if params["flip"] else img

        def _apply_to_segmentation(self, segmentation: torch.Tensor, **params: Any) -> torch.Tensor:
            if not params["flip"]:
                return segmentation
            return swap_left_right_labels(torch.flip(segmentation, [lr_axis + 1]))

    return LeftRightSwapMirror()


def _trainer_class() -> type:
    """nnUNetTrainer subclass with configurable budget and left-right-safe mirroring (built lazily)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class DentateNnUNetTrainer(nnUNetTrainer):
        """nnU-Net's trainer; mirroring never touches the left-right axis except with a label 1/2 swap.

        ``lr_swap_probability`` > 0 adds the same laterality-safe mirror the MONAI loop uses (flip the LR axis
        and swap left/right DN labels), so both frameworks see identical left-right augmentation.
        """

        lr_axis: int = 2
        allow_mirroring: bool = True
        lr_swap_probability: float = 0.0
        mirror_lr_axis: bool = False  # True only for side-less targets (merged DN class, cerebellum)
        cpu_bf16: bool = False  # trainer.amp on a CPU with native bf16: nnU-Net itself autocasts on CUDA only

        def train_step(self, batch: dict) -> dict:
            """nnU-Net's step; on CPU with ``cpu_bf16`` the forward pass and loss run under bf16 autocast (nnU-Net
            keeps CPU steps in float32: 1.95 s vs 0.76 s per step for our 16-128 plan, 64^3, batch 2). Its
            per-epoch validation stays float32."""
            if self.device.type != "cpu" or not self.cpu_bf16:
                return super().train_step(batch)
            data, target = batch["data"].to(self.device), batch["target"]
            target = [t.to(self.device) for t in target] if isinstance(target, list) else target.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = self.network(data)
                loss = self.loss(output, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)  # nnU-Net's clipping
            self.optimizer.step()
            return {"loss": loss.detach().float().cpu().numpy()}

        @classmethod
        def get_training_transforms(cls, *args: Any, **kwargs: Any) -> Any:  # nnU-Net calls it on the instance
            composed = nnUNetTrainer.get_training_transforms(*args, **kwargs)
            if cls.lr_swap_probability > 0:
                composed.transforms.insert(0, _lr_swap_mirror_transform(cls.lr_axis, cls.lr_swap_probability))
            return composed

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802 (nnU-Net's name)
            parent = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            rotation, dummy_2d, initial_patch, mirror_axes = parent
            axes = tuple(mirror_axes or ())
            allowed = (axes if self.mirror_lr_axis else tuple(a for a in axes if a != self.lr_axis)
                       ) if self.allow_mirroring else ()
            self.inference_allowed_mirroring_axes = allowed
            return rotation, dummy_2d, initial_patch, allowed

        def plot_network_architecture(self) -> None:  # needs hiddenlayer/graphviz; skip quietly
            return None

    return DentateNnUNetTrainer


def train_nnunet(run_dir: Path, train_samples: Sequence[StageSample], val_samples: Sequence[StageSample],
                 classes: Sequence[str], *, patch_size: Sequence[int], batch_size: int, epochs: int,
                 iterations_per_epoch: int, val_iterations: int, arch_kwargs: dict[str, Any],
                 device: torch.device, seed: int = 0, initial_lr: float | None = None,
                 allow_mirroring: bool = True, lr_swap_probability: float = 0.0, mirror_lr_axis: bool = False,
                 resume: bool = False, dist: Any = None, cpu_bf16: bool = False) -> dict[str, Any]:
    """Run nnU-Net planning, preprocessing and training; returns the ``nnunet`` section of the model card.

    ``dist`` (a :class:`~dentate_research.training.distributed.DistContext` of several CUDA processes): nnU-Net's
    own multi-GPU training, passed through. Rank 0 writes the raw dataset, plans and preprocesses while the others
    wait; then every rank builds the trainer, which finds the initialized process group and does what
    ``nnUNetv2_train ... -num_gpus N`` does: DistributedDataParallel, the batch (``batch_size`` = global batch) split
    over the ranks, rank 0 logging and saving. nnU-Net's DDP is CUDA-only.

    ``mirror_lr_axis``: let nnU-Net's own mirroring flip the left-right axis too (only for side-less labels:
    the merged DN class or the cerebellum); lateralized labels get ``lr_swap_probability`` instead.

    ``cpu_bf16``: on CPU, train steps under bf16 autocast (``trainer.amp``; the caller checks the CPU supports it).

    Paths in the returned dict are relative to ``run_dir``. The epoch log (losses, pseudo Dice) is under
    ``"history"``.
    """
    if not train_samples:
        raise ValueError("nnunet: no training samples")
    cpu_bf16 = bool(cpu_bf16) and torch.device(device).type == "cpu"
    root = Path(run_dir) / "nnunet"
    settings = {**arch_config_kwargs("nnunet"), **dict(arch_kwargs)}  # configs/arch/nnunet.yaml fills gaps
    dataset_id, name = int(settings["dataset_id"]), str(settings["dataset_name"])
    n_proc_DA, n_proc = int(settings["n_proc_DA"]), int(settings["n_proc"])
    ids = [s.case_id for s in train_samples] + [s.case_id for s in val_samples]
    if len(set(ids)) != len(ids):
        raise DataError(f"nnunet: duplicate case IDs across train/val: {sorted({i for i in ids if ids.count(i) > 1})}")
    main = dist is None or dist.is_main
    with nnunet_environment(root, n_proc_DA, n_proc):
        dname = dataset_name(dataset_id, name)
        preprocessed = root / "preprocessed" / dname
        plans_file = preprocessed / f"{PLANS_NAME}.json"
        with contextlib.nullcontext() if dist is None else dist.main_first():
            if main and not (resume and plans_file.exists()):
                write_raw_dataset(root / "raw", dataset_id, name, list(train_samples) + list(val_samples), classes)
                plan_and_preprocess(dataset_id, patch_size, batch_size, arch_kwargs, n_proc)
            if main:  # our subject-level split; nnU-Net never creates one (or asks for one)
                _save_json([{"train": [s.case_id for s in train_samples], "val": [s.case_id for s in val_samples]}],
                           preprocessed / "splits_final.json")
        plans = _load_json(plans_file)
        dataset_json = _load_json(preprocessed / "dataset.json")

        torch.manual_seed(seed)
        np.random.seed(seed)
        cls = _trainer_class()
        cls.lr_axis = lr_axis_in_nnunet(plans["transpose_forward"])
        cls.allow_mirroring = bool(allow_mirroring)
        cls.lr_swap_probability = float(lr_swap_probability)
        cls.mirror_lr_axis = bool(mirror_lr_axis)
        cls.cpu_bf16 = cpu_bf16
        plans_for_trainer = copy.deepcopy(plans)
        plans_for_trainer["continue_training"] = bool(resume)
        trainer = cls(plans=plans_for_trainer, configuration=NNUNET_CONFIGURATION, fold=0,
                      dataset_json=dataset_json, device=device)
        trainer.num_epochs = int(epochs)
        trainer.num_iterations_per_epoch = int(iterations_per_epoch)
        trainer.num_val_iterations_per_epoch = max(1, int(val_iterations))
        trainer.save_every = max(1, int(epochs) // 5)
        if initial_lr is not None:
            trainer.initial_lr = float(initial_lr)
        output = Path(trainer.output_folder)
        if resume:
            for ckpt in ("checkpoint_latest.pth", "checkpoint_final.pth"):
                if (output / ckpt).exists():
                    trainer.load_checkpoint(str(output / ckpt))
                    break
        trainer.run_training()
        log = trainer.logger.local_logger.my_fantastic_logging
        history = {k: [float(np.mean(v)) if isinstance(v, (list, tuple)) else float(v) for v in log.get(k, [])]
                   for k in ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs")}
        history["dice_per_class"] = [list(map(float, v)) for v in log.get("dice_per_class_or_region", [])]
        starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
        history["wall_time_s"] = [float(end - starts[0]) for end in ends] if starts else []  # training + nnU-Net val
        mirror_axes = trainer.inference_allowed_mirroring_axes
        del trainer
    rel = output.relative_to(run_dir)
    return {
        "configuration": NNUNET_CONFIGURATION,
        "dataset": dname,
        "plans": str(rel.parent / "plans.json"),
        "dataset_json": str(rel.parent / "dataset.json"),
        "fold_dir": str(rel),
        "checkpoints": {k: str(rel / v) for k, v in CHECKPOINTS.items()},
        "transpose_forward": list(plans["transpose_forward"]),
        "lr_axis": lr_axis_in_nnunet(plans["transpose_forward"]),
        "inference_allowed_mirroring_axes": list(mirror_axes) if mirror_axes is not None else [],
        "cpu_bf16": cpu_bf16,
        "patch_size_nnunet": plans["configurations"][NNUNET_CONFIGURATION]["patch_size"],
        "spacing_nnunet": plans["configurations"]["3d_fullres"]["spacing"],
        "history": history,
    }
