"""The torch device a run or a trained stage uses (``cpu`` | ``cuda`` | ``cuda:N`` | ``auto``)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


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


def cpu_bf16_supported() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 / AMX), where ``trainer.amp`` on CPU
    measures faster (``benchmarks/bench_train_speed.py``); elsewhere bf16 autocast is slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def amp_usable(amp: bool, device: torch.device, who: str, cpu_bf16_safe: bool = True) -> bool:
    """``trainer.amp`` as ``device`` can honour it: on a CPU without native bf16, or for a network whose training
    breaks under bf16 autocast on CPU (``cpu_bf16_safe=False``, :attr:`~dentate_research.models.registry.ArchSpec.
    cpu_bf16_safe`), a warning and False (``who`` trains in float32 there), else ``amp``."""
    if amp and device.type == "cpu" and not cpu_bf16_supported():
        log.warning(f"trainer.amp=true: this CPU has no native bfloat16 (AVX512-BF16 / AMX), where bf16 autocast is "
                    f"slower than float32; {who} trains in float32")
        return False
    if amp and device.type == "cpu" and not cpu_bf16_safe:
        log.warning(f"trainer.amp=true: bf16 autocast on CPU makes {who}'s gradients non-finite within a few steps; "
                    f"it trains in float32 on CPU (mixed precision stays on for CUDA)")
        return False
    return bool(amp)
