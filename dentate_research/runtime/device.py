"""The torch device a run or a trained stage uses (``cpu`` | ``cuda`` | ``cuda:N`` | ``auto``)."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` (cuda if available). Requesting absent CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available (torch {torch.__version__}, "
                             f"cuda build: {torch.version.cuda}); use trainer.device=cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device '{name}' unknown; allowed: cpu, cuda, cuda:N, auto")
