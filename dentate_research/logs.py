"""Where the package's messages go. Library modules log (``logging.getLogger(__name__)``) and never print; the
command-line verbs print their own results and route the library's messages:

- argparse verbs (``segment``, ``demo``, ...) and the benchmark scripts: :func:`console_logging` (one line per
  message on stderr, ``[training.api] ...``);
- Hydra verbs (``train``, ``reproduce``): Hydra's job logging (console and ``<hydra output dir>/<job>.log``);
- every training run, with or without Hydra: :func:`run_log_file` appends the messages of the run to
  ``<run folder>/train.log`` (unless Hydra already writes that very file).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "dentate_research"
RUN_LOG_NAME = "train.log"


class ShortNameFormatter(logging.Formatter):
    """``[training.api] message``; ``WARNING`` and above also name their level."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix(PACKAGE + ".")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"[{name}] {level}{record.getMessage()}"


def console_logging(level: int = logging.INFO) -> None:
    """Show the package's messages of ``level`` and above on stderr (idempotent; other libraries' loggers are left
    at their own levels)."""
    logger = logging.getLogger(PACKAGE)
    logger.setLevel(level)
    if not any(getattr(h, "_dentate_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ShortNameFormatter())
        handler._dentate_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # one line per message, not a second one from a root handler


@contextlib.contextmanager
def run_log_file(run_dir: Path | str) -> Iterator[Path]:
    """Append the package's messages to ``run_dir/train.log`` while the block runs. Skipped when a handler of the
    root logger (Hydra's job logging) already writes that file, so that no line is written twice."""
    path = (Path(run_dir) / RUN_LOG_NAME).resolve()
    root_files = {Path(getattr(h, "baseFilename", "")).resolve() for h in logging.getLogger().handlers
                  if isinstance(h, logging.FileHandler)}
    logger = logging.getLogger(PACKAGE)
    if path in root_files and logger.propagate:
        yield path
        return
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous_level)
