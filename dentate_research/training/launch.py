"""Training runs as jobs through submitit, the engine behind Hydra's submitit launcher (hydra-submitit-launcher).

``train -m hydra/launcher=submitit_local|slurm ...`` goes through the Hydra plugin itself. This module gives the
same launchers (same ``configs/hydra/launcher/*.yaml``, same parameter mapping) to code that is not a Hydra sweep,
and what the plugin lacks, a dry run:

* :func:`launcher_config`: the ``hydra.launcher`` node that ``train -m hydra/launcher=X ...`` would use;
* :func:`make_executor`: a ``submitit.AutoExecutor`` with the node's parameters mapped exactly as the plugin's
  ``BaseSubmititLauncher.launch`` maps them (shared keys as they are, the others prefixed with the cluster name);
* :func:`sbatch_script`: the sbatch file submitit would submit for n jobs (a Slurm job array when n > 1), built by
  submitit's own ``_make_sbatch_string`` without submitting anything (submitit 1.5);
* :class:`JobLauncher`: one job per training config (``map_array``), wait, gather the run folders (used by
  ``reproduce hydra/launcher=...``; :mod:`dentate_research.studies.runner`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CLUSTERS = {"LocalLauncher": "local", "SlurmLauncher": "slurm", "BasicLauncher": None}
# keys of the launcher node that are not executor parameters
_NOT_PARAMETERS = {"_target_", "submitit_folder", "max_num_timeout"}


def is_launcher_override(arg: str) -> bool:
    """``hydra/launcher=X`` or ``hydra.launcher.KEY=VALUE`` (optionally with ``+``/``++``)."""
    bare = arg.lstrip("+")
    return bare.startswith("hydra/launcher=") or bare.startswith("hydra.launcher.")


def launcher_config(overrides: Sequence[str], job_name: str = "train") -> dict[str, Any]:
    """The resolved ``hydra.launcher`` node of ``configs/train.yaml`` with ``overrides`` (``hydra/launcher=slurm``,
    ``hydra.launcher.partition=gpu``, ...), as a plain dict."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from ..schema import compose

    cfg = compose("train", ["+arch=unet", f"hydra.job.name={job_name}", *overrides], return_hydra_config=True)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # type: ignore[return-value]


def cluster_of(launcher_cfg: Mapping[str, Any]) -> str | None:
    """``local`` | ``slurm`` for the submitit launchers, None for Hydra's basic (in-process) launcher."""
    name = str(launcher_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if name not in _CLUSTERS:
        raise ValueError(f"hydra.launcher._target_={launcher_cfg.get('_target_')}: not a launcher this package can "
                         f"drive; use hydra/launcher=basic, submitit_local or slurm")
    return _CLUSTERS[name]


def make_executor(launcher_cfg: Mapping[str, Any], folder: str | Path | None = None, name: str | None = None,
                  dry_run: bool = False) -> Any:
    """A ``submitit.AutoExecutor`` configured like the Hydra plugin configures it from the same launcher node.

    ``dry_run``: build a Slurm executor also where Slurm is absent (submitit refuses without ``srun``), only to
    print its sbatch script (:func:`sbatch_script`); never submit with it.
    """
    import contextlib
    from unittest import mock

    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    cluster = cluster_of(launcher_cfg)
    if cluster is None:
        raise ValueError("the basic launcher runs in-process; there is no submitit executor for it")
    params = dict(launcher_cfg)
    if name is not None:
        params["name"] = name
    init: dict[str, Any] = {"folder": str(folder if folder is not None else params["submitit_folder"])}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params["max_num_timeout"]
    no_slurm_check = (mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
                      if dry_run and cluster == "slurm" else contextlib.nullcontext())
    with no_slurm_check:
        executor = submitit.AutoExecutor(cluster=cluster, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"{cluster}_{k}": v for k, v in params.items()
                                  if k not in _NOT_PARAMETERS})
    return executor


def sbatch_script(executor: Any, n_jobs: int) -> str:
    """The sbatch file submitit submits for ``n_jobs`` jobs of ``executor`` (a Slurm executor): the same text its
    ``map_array`` writes (an ``--array=0-(n-1)%parallelism`` job when n > 1), nothing is submitted."""
    # Private submitit API, kept on purpose: submitit (1.5) has no public way to render the sbatch file without
    # submitting it. AutoExecutor exposes its cluster executor only as ``_executor``, and SlurmExecutor writes the
    # file with the module function ``_make_sbatch_string`` and its ``_submitit_command_str`` property; pyproject pins
    # submitit to 1.5.x and tests/test_scale_out.py checks the script this returns.
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    inner = getattr(executor, "_executor", executor)
    if not isinstance(inner, SlurmExecutor):
        raise ValueError("sbatch_script needs a Slurm executor (hydra/launcher=slurm)")
    params = dict(inner.parameters)
    if n_jobs > 1:
        params["map_count"] = int(n_jobs)
    return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder, **params)


def run_training_job(cfg: dict[str, Any]) -> dict[str, Any]:
    """The function every job runs: ``train_stage`` on a resolved train config; returns where and how long."""
    import socket

    from omegaconf import OmegaConf

    from .api import train_stage

    t0 = time.perf_counter()
    run_dir = train_stage(OmegaConf.create(cfg))
    return {"run_dir": str(run_dir), "seconds": time.perf_counter() - t0, "host": socket.gethostname()}


class JobsFailedError(RuntimeError):
    """Some jobs of a batch failed; the message names each one and its log files."""


class JobLauncher:
    """Submit training configs as submitit jobs (one job per config, a job array), wait and gather the results."""

    def __init__(self, launcher_cfg: Mapping[str, Any], folder: str | Path | None = None, name: str = "dentate"):
        self.cluster = cluster_of(launcher_cfg)
        self.executor = make_executor(launcher_cfg, folder, name)
        self.folder = Path(str(self.executor.folder))

    def run(self, configs: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
        """Run ``run_training_job(cfg)`` for every config as its own job; returns their results in order (each with
        ``job_id``). Raises :class:`JobsFailedError` after every job has ended if any failed."""
        if not configs:
            return []
        jobs = self.executor.map_array(run_training_job, list(configs))
        for label, job in zip(labels, jobs, strict=True):
            log.info("%s job %s: %s", self.cluster, job.job_id, label)
        results, failed = [], []
        for label, job in zip(labels, jobs, strict=True):
            try:
                results.append({**job.result(), "job_id": str(job.job_id)})
            except Exception as exc:  # submitit raises FailedJobError / UncompletedJobError with the job's trace
                failed.append(f"{label} (job {job.job_id}, logs {job.paths.stdout} and {job.paths.stderr}): "
                              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
                results.append({"job_id": str(job.job_id), "failed": True})
        if failed:
            raise JobsFailedError(f"{len(failed)} of {len(jobs)} training jobs failed:\n  " + "\n  ".join(failed))
        return results


__all__ = ["JobLauncher", "JobsFailedError", "cluster_of", "is_launcher_override", "launcher_config", "make_executor",
           "run_training_job", "sbatch_script"]
