"""Atomic file writes (stdlib) and a file lock (``filelock``).

Every output file is written under a temporary name in its own folder and then renamed onto its final name
(``os.replace``, atomic on POSIX within one file system). A reader, a concurrent writer, an interruption (Ctrl-C,
SIGTERM) or a SIGKILL therefore never sees a partial file under a final name: it sees the old file, the new
file, or no file. A SIGKILL can leave a temporary file behind; its name starts with :data:`TEMP_PREFIX`
(``.tmp-<pid>-<random>-<final name>``, so the extension, and with it the NIfTI/PNG format, is kept) and
:func:`remove_temp_files` deletes such leftovers.

:func:`file_lock` is an exclusive lock on a lock file (``filelock.FileLock``: ``fcntl.flock`` on POSIX,
``msvcrt.locking`` on Windows), released when the block ends or when the process dies (also on SIGKILL), used to
serialize read-modify-write cycles of shared tables (``volumes.csv``). Nothing here is POSIX-only at import time.

Example::

    with atomic_output(out / "x_seg.nii.gz") as tmp:
        nib.save(img, tmp)
    write_text_atomic(out / "x_metadata.json", text)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

TEMP_PREFIX = ".tmp-"


def temp_path(path: Path | str) -> Path:
    """A fresh temporary name next to ``path`` that keeps its file name (and so its extension)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def is_temp_file(path: Path | str) -> bool:
    return Path(path).name.startswith(TEMP_PREFIX)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path | str, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on any error (including
    KeyboardInterrupt) it is deleted and ``path`` is left as it was. The folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer did not create the temporary file for {path}")
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv_atomic(frame: Any, path: Path | str, **kwargs: Any) -> Path:
    """``frame.to_csv`` (pandas) through a temporary file; ``index=False`` unless given."""
    kwargs.setdefault("index", False)
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def write_figure_atomic(fig: Any, path: Path | str, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` (matplotlib) through a temporary file; the temporary name keeps the extension, so the
    format follows ``path`` unless ``format`` is given."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return Path(path)


def remove_temp_files(folder: Path | str) -> list[Path]:
    """Delete leftover temporary files (``.tmp-*``) directly inside ``folder``; returns what was removed.

    Only call it where no other process may be writing the same files (e.g. a case folder being redone, or
    while holding the lock that every writer of that folder takes)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if is_temp_file(entry) and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


@contextlib.contextmanager
def file_lock(lock_path: Path | str) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_path`` (created if absent, left in place) for the ``with`` block.

    Every call takes its own lock, so two blocks on one path exclude each other also within one process (threads
    included), as ``flock`` on separate descriptors does; waits as long as another holder keeps it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path, mode=0o644):
        yield lock_path
