"""Does bf16 autocast on CPU train each architecture correctly? Steps side by side in float32 and bf16.

For each MONAI architecture at the CPU study's size (``arch_overrides`` of
``dentate_research/configs/reproduce/experiment/cpu.yaml``, the one place they are written), ``--steps`` AdamW steps
(the registry's optimizer, DiceCE loss as in ``training/monai_loop.py``, gradient clipping at 12) on the same
random 64^3 batches (batch 2, N(0, 1) image, 3 % foreground), once in float32 and once under bf16 autocast with
channels_last_3d (the training defaults), from the same initial weights. Reported per variant: the first step whose
loss or gradient norm is not finite, the loss after the last step and the median seconds per step (after the first).
The registry's ``ArchSpec.cpu_bf16_safe`` is the conclusion of this table (SwinUNETR: False; bf16 non-finite from
step 13 of 30, float32 finite, 3.84 vs 3.99 s per step).

    python benchmarks/bench_bf16_stability.py --archs swin_unetr --steps 30

One job at a time on the machine; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from omegaconf import OmegaConf

from dentate_research.models import build_network, get_arch
from dentate_research.runtime.device import cpu_bf16_supported
from dentate_research.schema import arch_config_kwargs

CPU_STUDY = Path(__file__).resolve().parents[1] / "dentate_research/configs/reproduce/experiment/cpu.yaml"
PATCH = (64, 64, 64)


def cpu_study_kwargs(arch: str) -> dict:
    """The architecture's kwargs (configs/arch/<arch>.yaml) with the CPU study's ``arch.kwargs.*`` overrides."""
    kwargs = OmegaConf.create(arch_config_kwargs(arch))
    for item in OmegaConf.load(CPU_STUDY).arch_overrides.get(arch, []):
        key, value = str(item).split("=", 1)
        if key.startswith("arch.kwargs."):
            OmegaConf.update(kwargs, key.removeprefix("arch.kwargs."), OmegaConf.from_dotlist([f"v={value}"]).v)
    return OmegaConf.to_container(kwargs, resolve=True)  # type: ignore[return-value]


def run(arch: str, bf16: bool, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    net = build_network(arch, 1, 2, PATCH, cpu_study_kwargs(arch))
    memory_format = torch.channels_last_3d if bf16 else torch.contiguous_format
    net = net.to(memory_format=memory_format).train()
    spec = get_arch(arch).optimizer
    optimizer = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    data = torch.Generator().manual_seed(seed + 1)
    first_bad, loss_value, seconds = None, math.nan, []
    for step in range(1, steps + 1):
        x = torch.randn(2, 1, *PATCH, generator=data).contiguous(memory_format=memory_format)
        y = (torch.rand(2, 1, *PATCH, generator=data) > 0.97).long()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0))
        optimizer.step()
        seconds.append(time.perf_counter() - t0)
        loss_value = float(loss.detach())
        if first_bad is None and not (math.isfinite(loss_value) and math.isfinite(norm)):
            first_bad = step
    return {"first_non_finite_step": first_bad or "-", "last_loss": loss_value,
            "s_per_step": statistics.median(seconds[1:] or seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["unet", "attention_unet", "segresnet", "unetr", "swin_unetr"])
    parser.add_argument("--steps", type=int, default=30, help="AdamW steps per variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not cpu_bf16_supported():
        print("this CPU has no native bf16: trainer.amp trains every network in float32 here; nothing to compare")
        return 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| arch | precision | first non-finite step | loss after last step | s per step (median) |")
    print("|---|---|---|---|---|")
    for arch in args.archs:
        for bf16 in (False, True):
            r = run(arch, bf16, args.steps, args.seed)
            print(f"| {arch} | {'bf16 + channels_last_3d' if bf16 else 'float32'} | {r['first_non_finite_step']} | "
                  f"{r['last_loss']:.4f} | {r['s_per_step']:.2f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
