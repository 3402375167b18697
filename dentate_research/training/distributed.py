"""Multi-process (multi-GPU) training with torch DistributedDataParallel: process group, ranks, seeds, collectives.

A run with ``trainer.devices=N`` (N > 1) is N processes started by an existing engine, never by this package:

* ``torchrun --nproc_per_node=N -m dentate_research train +arch=unet trainer.devices=N ...`` (one machine), or
* a Slurm job with N tasks (``hydra/launcher=slurm hydra.launcher.tasks_per_node=N hydra.launcher.gpus_per_node=N``;
  also ``submitit_local``): submitit's ``TorchDistributedEnvironment`` exports ``RANK``/``WORLD_SIZE``/... .

:func:`setup_distributed` checks that ``WORLD_SIZE`` equals ``trainer.devices`` and initializes the process group
(``env://``): ``nccl`` on CUDA (device ``cuda:LOCAL_RANK``), ``gloo`` on CPU (``trainer.dist_backend=auto``).
What each rank does (:mod:`.monai_loop`, :func:`~dentate_research.training.api.train_stage`):

* every rank reads the data and builds the same network (same seed; DDP also broadcasts rank 0's weights);
* rank ``r`` with ``trainer.accumulate_grad_batches=A`` draws micro-batch ``m`` of every step from its own patch
  stream number ``k = r * A + m``, seeded :func:`shard_seed` ``(seed, k) = seed + 10000 k`` (stream 0 is the
  single-process stream): ranks draw different patches, and N ranks with ``A = 1`` draw exactly the patches of one
  process with ``A = N`` (same global batch ``N x batch_size``, same gradient: DDP averages over ranks,
  accumulation over micro-batches);
* only rank 0 writes (run folder claim, config, checkpoints, metrics, model card, plots, run_info) and validates;
  the other ranks wait for the stop decision rank 0 broadcasts after every epoch (plateau, wall-clock budget), so
  every rank stops after the same epoch.

Errors (one line, exit 2 in the CLI): ``trainer.devices`` that does not match the number of started processes, a
CUDA device requested without CUDA, nnU-Net DDP on CPU (nnU-Net's own DDP is CUDA-only).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.io import DataError
from ..schema import DistBackend

SHARD_SEED_STRIDE = 10_000
BACKENDS = DistBackend.words()


def shard_seed(seed: int, shard: int) -> int:
    """Seed of patch stream ``shard`` (rank x accumulate_grad_batches + micro-batch); stream 0 keeps ``seed``."""
    return int(seed) + SHARD_SEED_STRIDE * int(shard)


@dataclass
class DistContext:
    """This process's place in a (possibly single-process) run; collectives are no-ops without a process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled)."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def mean(self, value: float) -> float:
        """Mean of ``value`` over the ranks."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. generates a missing data set or split file), then the others.

        If rank 0 fails inside the block it exits with an error, and torchrun / submitit end the waiting ranks.
        """
        if self.distributed and not self.is_main:
            self.barrier()
        yield
        if self.distributed and self.is_main:
            self.barrier()

    def max_weight_diff(self, module: torch.nn.Module) -> float:
        """Largest absolute difference between this module's floating-point weights on any rank and on rank 0
        (one broadcast of the flattened weights, one max-reduce); 0.0 when the ranks are in sync."""
        if not self.distributed:
            return 0.0
        tensors = [t.detach().reshape(-1).to(torch.float64) for t in module.state_dict().values()
                   if torch.is_floating_point(t)]
        flat = torch.cat(tensors).to(self.device) if tensors else torch.zeros(1, dtype=torch.float64,
                                                                               device=self.device)
        ref = flat.clone()
        torch.distributed.broadcast(ref, src=0)
        diff = (flat - ref).abs().max().reshape(1)
        torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
        return float(diff.item())

    def close(self) -> None:
        """Destroy the process group if :func:`setup_distributed` created it."""
        if self.initialized_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.initialized_here = False

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _export_submitit_env(devices: int) -> bool:
    """Inside a submitit job (Slurm or local) with ``devices`` tasks: export RANK/WORLD_SIZE/MASTER_* for env://."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    try:
        import submitit
    except ImportError:  # pragma: no cover - a dependency of hydra-submitit-launcher
        return False
    env = submitit.JobEnvironment()
    if env.num_tasks != devices:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def setup_distributed(devices: int, device_name: str, backend: str = "auto",
                      timeout_min: float = 60.0) -> tuple[DistContext, torch.device]:
    """Join (or create) the process group of a ``trainer.devices``-process run; returns the context and the device.

    ``devices == 1`` (and no multi-process launcher): a single-process context, device as ``trainer.device``.
    ``devices > 1``: ``WORLD_SIZE`` (torchrun) or the submitit job's task count must equal ``devices``; the device
    is ``cuda:LOCAL_RANK`` for ``trainer.device=cuda|auto`` with CUDA, else ``cpu``; backend ``auto`` = nccl on
    CUDA, gloo on CPU. ``timeout_min`` bounds every collective (rank 0 validates while the others wait).
    """
    from ..runtime.device import resolve_device

    devices = int(devices)
    if devices < 1:
        raise DataError(f"trainer.devices must be >= 1, got {devices}")
    if backend not in BACKENDS:
        raise DataError(f"trainer.dist_backend={backend}: unknown; allowed: {list(BACKENDS)}")
    world = _env_int("WORLD_SIZE")
    if devices == 1:
        if world not in (None, 1):
            raise DataError(f"trainer.devices=1 but this process is one of WORLD_SIZE={world} processes (torchrun); "
                            f"pass trainer.devices={world}")
        return DistContext(device=resolve_device(device_name)), resolve_device(device_name)
    if world is None and _export_submitit_env(devices):
        world = _env_int("WORLD_SIZE")
    if world != devices:
        started = "a single process" if world is None else f"WORLD_SIZE={world} processes"
        raise DataError(f"trainer.devices={devices} needs {devices} processes, got {started}: start the run with "
                        f"'torchrun --nproc_per_node={devices} -m dentate_research train ... trainer.devices={devices}'"
                        f" or a launcher with {devices} tasks (hydra.launcher.tasks_per_node={devices})")
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    wants_cuda = (device_name == "auto" and torch.cuda.is_available()) or device_name.startswith("cuda")
    if wants_cuda:
        resolve_device("cuda")  # a clear error without CUDA
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        resolve_device(device_name)
        device = torch.device("cpu")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise DataError("trainer.dist_backend=nccl needs CUDA devices; use gloo (or auto) on CPU")
    initialized_here = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                             timeout=datetime.timedelta(minutes=float(timeout_min)))
        initialized_here = True
    elif torch.distributed.get_world_size() != world:
        raise DataError(f"trainer.devices={devices}: the existing process group has "
                        f"{torch.distributed.get_world_size()} processes")
    ctx = DistContext(rank=rank, local_rank=local_rank, world_size=world, backend=torch.distributed.get_backend(),
                      device=device, initialized_here=initialized_here)
    return ctx, device


__all__ = ["BACKENDS", "SHARD_SEED_STRIDE", "DistContext", "setup_distributed", "shard_seed"]
