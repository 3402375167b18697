"""Run folders of ``train_stage``: never overwrite a finished or running run, unique timestamped folders, resume.

* :func:`check_run_dir` (before any data is read): an existing run folder that holds anything besides Hydra's own
  files (``.hydra/``, ``*.log``) is refused unless ``trainer.resume=true``; ``trainer.resume=true`` needs a
  checkpoint to resume from (MONAI ``checkpoints/last.pt``, nnU-Net ``checkpoint_latest.pth`` /
  ``checkpoint_final.pth``).
* :func:`claim_run_dir` (just before the run writes its first file) creates the folder and claims it atomically
  with a ``.run_claim`` file (``O_CREAT | O_EXCL``). Two runs that got the same timestamped folder (Hydra's
  ``runs/<stage>/<arch>/<second>``, or :func:`default_run_dir`) therefore never share it: with ``unique=True``
  the second one moves on to ``<folder>_2``, ``<folder>_3``, ...; with an explicit folder it is refused.

Errors are :class:`RunDirError` (a :class:`~dentate_research.data.io.DataError`), one line naming the key, the
folder and what to do.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..data.io import DataError

RUN_CLAIM = ".run_claim"
HYDRA_ENTRIES = (".hydra",)
MAX_SUFFIX = 1000


class RunDirError(DataError):
    """A run folder that cannot be used (one line: key, folder, what is allowed)."""


def run_dir_contents(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` other than Hydra's own (``.hydra/``, top-level ``*.log``) and the claim file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in (*HYDRA_ENTRIES, RUN_CLAIM) and not (p.suffix == ".log" and p.is_file()))


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``trainer.resume=true`` continues from, or None."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return last
    nnunet = run_dir / "nnunet"
    if nnunet.is_dir():
        for name in ("checkpoint_latest.pth", "checkpoint_final.pth"):
            found = sorted(nnunet.glob(f"**/{name}"))
            if found:
                return found[0]
    return None


def check_run_dir(run_dir: Path, *, resume: bool, key: str = "paths.run_dir") -> None:
    """Refuse (before any work) a run folder that would overwrite another run, or a resume without checkpoint;
    ``key`` names the setting in the message (``paths.run_dir`` or ``hydra.run.dir``)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{key}={run_dir}: exists and is not a folder; choose another run folder")
    if resume:
        if resume_checkpoint(run_dir) is None:
            raise RunDirError(f"trainer.resume=true: no checkpoint to resume in {run_dir} (looked for "
                              "checkpoints/last.pt and nnunet/**/checkpoint_latest.pth); point paths.run_dir (or "
                              "hydra.run.dir) at an interrupted run, or drop trainer.resume to train from scratch")
        return
    found = run_dir_contents(run_dir)
    if found:
        raise RunDirError(f"{key}={run_dir}: run folder exists and is not empty ({', '.join(found[:4])}"
                          f"{', ...' if len(found) > 4 else ''}); choose another folder (paths.run_dir / hydra.run.dir)"
                          ", remove it, or pass trainer.resume=true to continue its checkpoint")


def _claim(folder: Path) -> bool:
    try:
        fd = os.open(folder / RUN_CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
                 .encode())
    finally:
        os.close(fd)
    return True


def claim_run_dir(run_dir: Path, *, resume: bool, unique: bool) -> Path:
    """Create and claim the run folder; returns the folder used (``run_dir`` or, with ``unique``, the first free
    ``run_dir_<n>``). A resumed run reuses its folder (checked by :func:`check_run_dir`)."""
    run_dir = Path(run_dir)
    if resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    for n in range(1, MAX_SUFFIX):
        folder = run_dir if n == 1 else run_dir.with_name(f"{run_dir.name}_{n}")
        folder.mkdir(parents=True, exist_ok=True)
        if _claim(folder):
            if not run_dir_contents(folder):
                return folder
            (folder / RUN_CLAIM).unlink()  # something else appeared meanwhile: not ours to overwrite
        if not unique:
            found = run_dir_contents(folder)
            raise RunDirError(f"paths.run_dir={folder}: run folder is already used by another run "
                              f"({', '.join(found[:4]) or RUN_CLAIM}); choose another folder")
    raise RunDirError(f"paths.run_dir={run_dir}: no free run folder among {run_dir.name}_2 ... _{MAX_SUFFIX - 1}")


def remove_if_only_hydra(run_dir: Path) -> bool:
    """Delete a run folder that holds nothing but Hydra's own files (a run that failed before writing anything);
    returns whether it was removed. A claimed folder (another run's) is kept."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir_contents(run_dir) or (run_dir / RUN_CLAIM).exists():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()
