"""One torch training loop for every MONAI network (DiceCE loss, AdamW/SGD, poly/cosine LR, AMP, resume).

Budget = ``epochs`` x ``iterations_per_epoch`` batches of random patches; validation every ``val_every``
epochs runs the full sliding-window inferer on the validation cases (the same one inference uses) and the
best checkpoint is chosen by :func:`~dentate_research.training.validation.selection_score`.

Several processes (``trainer.devices=N`` under torchrun or a launcher with N tasks, :mod:`.distributed`): the
network is wrapped in DistributedDataParallel (gradients averaged over the ranks), every rank draws its own patch
stream, rank 0 alone validates and writes, and its stop decision (plateau, wall-clock budget) is broadcast so all
ranks stop after the same epoch. ``trainer.accumulate_grad_batches=A`` sums A micro-batches per step; a run on N
processes equals a single-process run with ``A = N`` (same patches, same averaged gradient; tests/test_scale_out.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from tqdm.auto import tqdm

from ..data.atomic import atomic_output
from ..data.labels import MERGED, network_label_scheme
from ..models import build_network, get_arch
from ..runtime.device import amp_usable
from ..runtime.inferer import postprocess_labels, predict_probabilities
from ..schema import LRSchedule, TrainerSettings
from .augmentation import Augmenter
from .backends.base import TrainingJob
from .datasets import PatchSampler
from .distributed import shard_seed
from .loggers import RunLogger
from .preprocessing import StageSample
from .validation import PlateauTracker, selection_score, stage_metrics

log = logging.getLogger(__name__)

LR_SCHEDULES = LRSchedule.words()
MAX_NONFINITE_STEPS_IN_A_ROW = 5  # then the run fails (TrainingDivergedError) instead of training on nothing


class TrainingDivergedError(RuntimeError):
    """The loss or the gradients stayed non-finite: the run fails rather than save a network of NaNs."""


def make_optimizer(params: Any, arch: str, s: TrainerSettings) -> torch.optim.Optimizer:
    """The architecture's recommended optimizer, with any setting given in ``s.optimizer`` taking precedence."""
    rec, given = get_arch(arch).optimizer, s.optimizer
    name = str(given.name or rec.name)
    lr = float(given.lr if given.lr is not None else rec.lr)
    wd = float(given.weight_decay if given.weight_decay is not None else rec.weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "SGD":
        momentum = float(given.momentum if given.momentum is not None else rec.momentum)
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"trainer.optimizer.name '{name}' unknown; allowed: AdamW, Adam, SGD")


def make_scheduler(optimizer: torch.optim.Optimizer, s: TrainerSettings) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LR multiplier: linear warm-up, then poly (exponent 0.9), cosine or constant."""
    if s.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"trainer.lr_schedule '{s.lr_schedule}' unknown; allowed: {list(LR_SCHEDULES)}")
    total = max(1, s.epochs * s.iterations_per_epoch)
    warm = max(0, int(s.warmup_iterations))

    def factor(it: int) -> float:
        if it < warm:
            return (it + 1) / warm
        frac = min(1.0, (it - warm) / max(1, total - warm))
        if s.lr_schedule == "poly":
            return (1 - frac) ** 0.9
        if s.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _save(path: Path, **state: Any) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def train_monai(job: TrainingJob, logger: RunLogger | None) -> dict[str, Any]:
    """Train a MONAI network; writes checkpoints/{last,best,final}.pt; returns the best validation metrics
    plus ``stop_reason`` (``budget`` | ``plateau`` | ``time_budget``), ``epochs_run``, ``iterations_run`` and
    ``distributed`` (world size, patch-stream seeds, global batch, largest weight difference between ranks).

    Every epoch row of metrics.csv carries ``wall_time_s`` (training + validation time since the start of the
    run, continued across a resume), ``timestamp_utc`` and, for validated epochs, ``val_time_s``.

    With ``dist`` (several processes, :mod:`.distributed`) the network is wrapped in DistributedDataParallel;
    rank 0 alone validates, logs (``logger`` may be None on the other ranks) and writes checkpoints, and the stop
    decision it takes after each epoch is broadcast. One step = ``trainer.accumulate_grad_batches`` micro-batches
    per rank, micro-batch ``m`` of rank ``r`` drawn from patch stream ``r * A + m`` (:func:`.distributed.shard_seed`).
    """
    run_dir, stage, arch, arch_kwargs, classes = job.run_dir, job.stage, job.arch, job.arch_kwargs, job.classes
    train_samples, val_samples, patch_size = job.train_samples, job.val_samples, job.patch_size
    loop, augmentation, inferer, postprocess = job.trainer, job.augmentation, job.inferer, job.postprocess
    margin_mm, device, seed, dist = job.margin_mm, job.device, job.seed, job.dist
    main = dist.is_main
    ckpt_dir = Path(run_dir) / "checkpoints"
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    # lateral: left/right DN channels (LR flips swap labels 1/2, TTA swaps channels); merged: one DN class
    scheme = network_label_scheme(stage, classes)
    lateralized, merge_labels = scheme.lateralized, scheme == MERGED
    network = build_network(arch, 1, len(classes), patch_size, arch_kwargs).to(device)
    memory_format = torch.channels_last_3d if loop.channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)  # weights laid out once; checkpoints load into any layout
    optimizer = make_optimizer(network.parameters(), arch, loop)
    scheduler = make_scheduler(optimizer, loop)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    use_amp = amp_usable(loop.amp, device, arch, cpu_bf16_safe=get_arch(arch).cpu_bf16_safe)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if use_amp and device.type == "cuda" else None
    accumulate = int(loop.accumulate_grad_batches)
    # patch streams of this process: rank r, micro-batch m -> stream r * A + m (stream 0 = the single-process one)
    stream_seeds = [shard_seed(seed, dist.rank * accumulate + m) for m in range(accumulate)]
    first = PatchSampler(train_samples, patch_size, loop.batch_size, loop.foreground_prob,
                         Augmenter(augmentation, lateralized_labels=lateralized, seed=stream_seeds[0]),
                         stream_seeds[0], merge_labels=merge_labels)
    samplers = [first] + [first.spawn(s, Augmenter(augmentation, lateralized_labels=lateralized, seed=s))
                          for s in stream_seeds[1:]]

    start_epoch, best_score, best_metrics, wall_offset = 0, -math.inf, {}, 0.0
    plateau_tracker = PlateauTracker(float(loop.min_delta))
    last = ckpt_dir / "last.pt"
    if loop.resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_score = int(state["epoch"]) + 1, float(state["best_score"])
        best_metrics = state.get("best_metrics", {})
        wall_offset = float(state.get("wall_time_s", 0.0))
        # a checkpoint written before the tracker had its own reference resumes from the best score
        plateau_tracker = PlateauTracker(float(loop.min_delta), float(state.get("plateau_reference", best_score)),
                                         int(state.get("since_best", 0)))
        for sampler, stream_seed in zip(samplers, stream_seeds, strict=True):
            sampler.rng = np.random.default_rng([stream_seed, start_epoch])
        if logger is not None:
            logger.load_existing()
    elif loop.init_checkpoint:  # fine-tuning: the network starts from a trained model, optimizer and LR fresh
        network.load_state_dict(torch.load(loop.init_checkpoint, map_location=device, weights_only=False)["model"])
    model: torch.nn.Module = network
    if dist.distributed:  # after any weight loading: DDP broadcasts rank 0's weights and buffers at construction
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    def predict(sample: StageSample) -> np.ndarray:  # the bare network: validation runs on rank 0 only
        probs = predict_probabilities(network, sample.image, inferer, device, 0, lateralized, use_amp)
        return postprocess_labels(np.argmax(probs, axis=0).astype(np.uint8), postprocess)

    iteration = start_epoch * loop.iterations_per_epoch
    skipped, skipped_in_a_row = 0, 0  # updates skipped for a non-finite loss or gradient (metrics: skipped_steps)
    t_run = time.perf_counter()
    stop_reason, epochs_run = "budget", start_epoch

    def wall() -> float:
        return wall_offset + time.perf_counter() - t_run

    for epoch in range(start_epoch, loop.epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(range(loop.iterations_per_epoch), desc=f"{arch} epoch {epoch + 1}/{loop.epochs}", leave=False,
                   disable=not main)
        for _ in bar:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for m, sampler in enumerate(samplers):
                x, y = sampler.next_batch()
                x, y = x.to(device).contiguous(memory_format=memory_format), y.to(device)
                # DDP averages gradients over the ranks once per step: skip its all-reduce on earlier micro-batches
                sync = m == accumulate - 1 or not dist.distributed
                with contextlib.nullcontext() if sync else model.no_sync():  # type: ignore[operator]
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        logits = model(x)
                        if isinstance(logits, (tuple, list)):
                            logits = logits[0]
                        loss = loss_fn(logits.float(), y)
                    scaled = loss / accumulate if accumulate > 1 else loss
                    if scaler is not None:
                        scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
                step_loss += float(loss.detach()) / accumulate
            if scaler is not None:
                scaler.unscale_(optimizer)
            # total gradient norm, then clipped to trainer.grad_clip when set (what clip_grad_norm_ does, without
            # rescaling every gradient by 1 when no clip is set); DDP: the same averaged gradient on every rank, so
            # every rank takes the same skip decision
            params = [q for q in network.parameters() if q.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm([q.grad for q in params])
            if loop.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(params, float(loop.grad_clip), grad_norm)
            if scaler is not None:
                scaler.step(optimizer)  # fp16 on CUDA: the scaler itself skips steps with inf gradients
                scaler.update()
            elif math.isfinite(step_loss) and bool(torch.isfinite(grad_norm)):
                optimizer.step()
                skipped_in_a_row = 0
            else:  # a non-finite loss or gradient: skip the update rather than write NaN into the weights
                skipped += 1
                skipped_in_a_row += 1
                if skipped_in_a_row >= MAX_NONFINITE_STEPS_IN_A_ROW:
                    raise TrainingDivergedError(
                        f"{arch}: loss {step_loss} / gradient norm {float(grad_norm)} not finite in "
                        f"{skipped_in_a_row} steps in a row (iteration {iteration + 1}, "
                        f"{'bf16 autocast' if use_amp else 'float32'}, lr {optimizer.param_groups[0]['lr']:.2g}); "
                        "lower trainer.optimizer.lr, set trainer.grad_clip, or train with trainer.amp=false")
            scheduler.step()
            iteration += 1
            losses.append(step_loss)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        finite_losses = [v for v in losses if math.isfinite(v)]
        train_loss = dist.mean(float(np.mean(finite_losses)) if finite_losses else math.nan)  # every rank's patches
        stop_code = 0  # decided by rank 0, broadcast: 0 go on, 1 wall-clock budget, 2 plateau
        if main:
            row: dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration, "train_loss": train_loss,
                                   "lr": float(optimizer.param_groups[0]["lr"]),
                                   "epoch_time_s": time.perf_counter() - t0, "skipped_steps": skipped}
            if skipped:
                log.warning("%s: %d update(s) skipped so far for a non-finite loss or gradient", arch, skipped)
            out_of_time = loop.max_minutes is not None and wall() >= 60.0 * float(loop.max_minutes)
            is_last = epoch + 1 == loop.epochs or out_of_time
            if val_samples and ((epoch + 1) % max(1, loop.val_every) == 0 or is_last):
                t_val = time.perf_counter()
                with torch.no_grad():
                    metrics = stage_metrics(stage, predict, val_samples, margin_mm)
                row.update({k: v for k, v in metrics.items() if k != "per_case"})
                row["val_time_s"] = time.perf_counter() - t_val
                score = selection_score(stage, metrics)
                row["val_score"] = score
                plateau_tracker.update(score)
                if score > best_score:
                    best_score, best_metrics = score, {k: v for k, v in metrics.items() if k != "per_case"}
                    best_metrics.update({"epoch": epoch + 1, "iteration": iteration, "wall_time_s": wall()})
                    _save(ckpt_dir / "best.pt", model=network.state_dict(), epoch=epoch, metrics=best_metrics)
            elif not val_samples and is_last:
                _save(ckpt_dir / "best.pt", model=network.state_dict(), epoch=epoch, metrics={})
            row["wall_time_s"] = wall()
            row["timestamp_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if logger is not None:
                logger.log(row)
            _save(last, model=network.state_dict(), optimizer=optimizer.state_dict(),
                  scheduler=scheduler.state_dict(), epoch=epoch, best_score=best_score, best_metrics=best_metrics,
                  wall_time_s=wall(), since_best=plateau_tracker.since_progress,
                  plateau_reference=plateau_tracker.reference)
            plateau = plateau_tracker.plateaued(loop.patience)
            stop_code = 1 if out_of_time else (2 if plateau else 0)
        stop_code = int(dist.broadcast_object(stop_code))  # every rank stops after the same epoch
        epochs_run = epoch + 1
        if stop_code:
            stop_reason = "time_budget" if stop_code == 1 else "plateau"
            if main:
                log.info("%s: stopping after epoch %d/%d (%d iterations, %.0f s): %s", arch, epoch + 1, loop.epochs,
                         iteration, wall(), f"wall-clock budget of {loop.max_minutes:g} min reached" if stop_code == 1
                         else f"no validation gain > {loop.min_delta} in {loop.patience} validations")
            break
    weight_diff = dist.max_weight_diff(network)  # 0.0: the ranks ended with identical weights
    if main:
        _save(ckpt_dir / "final.pt", model=network.state_dict(), epoch=epochs_run - 1)
        if not (ckpt_dir / "best.pt").exists():  # resumed after the last epoch, or validation never ran
            _save(ckpt_dir / "best.pt", model=network.state_dict(), epoch=epochs_run - 1, metrics={})
    distributed = {**dist.describe(), "accumulate_grad_batches": accumulate, "batch_size_per_process":
                   int(loop.batch_size), "global_batch": int(loop.batch_size) * accumulate * dist.world_size,
                   "stream_seeds": [shard_seed(seed, k) for k in range(dist.world_size * accumulate)],
                   "max_weight_diff_across_ranks": weight_diff}
    return {**best_metrics, "stop_reason": stop_reason, "epochs_run": epochs_run, "iterations_run": iteration,
            "distributed": distributed}
