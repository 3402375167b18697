"""Time per training iteration (forward + backward + optimizer step) per architecture, side by side.

Every network gets the same input (batch x 1 x patch^3, 3 classes), the same DiceCE loss and its registry
optimizer; architecture settings are the real ones from configs/arch/*.yaml. nnU-Net's network is the
PlainConvUNet nnU-Net plans for a 64^3-class patch at ~1 mm (5 stages, 32..320 features, deep supervision off
here, so it is a lower bound for nnU-Net's own training step).

    python benchmarks/bench_train_iter.py --patch 64 --batch 2 --iters 3
    python benchmarks/bench_train_iter.py --archs unet unetr swin_unetr --cpu-sized   # the CPU study's sizes

``--cpu-sized`` applies the ``arch.kwargs.*`` overrides of configs/reproduce/experiment/cpu.yaml.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml
from monai.losses import DiceCELoss
from omegaconf import OmegaConf

from dentate_research.models import available_architectures, build_network, count_parameters, get_arch
from dentate_research.schema import CONFIG_DIR, trainer_settings
from dentate_research.training.monai_loop import make_optimizer


def nnunet_network(patch: int) -> torch.nn.Module:
    """nnU-Net's default 3d_fullres PlainConvUNet topology for an isotropic patch (features 32 doubling to 320)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n_stages = 1
    while patch // 2 ** n_stages >= 4 and n_stages < 6:
        n_stages += 1
    return PlainConvUNet(
        input_channels=1, n_stages=n_stages, features_per_stage=[min(32 * 2 ** i, 320) for i in range(n_stages)],
        conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * n_stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1), n_conv_per_stage=[2] * n_stages, num_classes=3,
        n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False)


def cpu_sized_kwargs(name: str) -> dict[str, object]:
    """``arch.kwargs.*`` overrides of the CPU study preset for one architecture."""
    preset = OmegaConf.load(CONFIG_DIR / "reproduce" / "experiment" / "cpu.yaml")
    out: dict[str, object] = {}
    for item in (preset.get("arch_overrides") or {}).get(name, []):
        key, _, value = str(item).partition("=")
        if key.startswith("arch.kwargs."):
            out[key.removeprefix("arch.kwargs.")] = yaml.safe_load(value)
    return out


def bench(name: str, patch: int, batch: int, iters: int, warmup: int, cpu_sized: bool = False) -> dict[str, object]:
    if name == "nnunet":
        net = nnunet_network(patch)
    else:
        kwargs = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "arch" / f"{name}.yaml").kwargs)
        if cpu_sized:
            kwargs.update(cpu_sized_kwargs(name))
        net = build_network(name, 1, 3, (patch,) * 3, kwargs)
    loop = trainer_settings({"epochs": 1, "iterations_per_epoch": 1})
    optimizer = make_optimizer(net.parameters(), name, loop)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    x = torch.randn(batch, 1, patch, patch, patch)
    y = torch.randint(0, 3, (batch, 1, patch, patch, patch))
    times = []
    net.train()
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"arch": name, "params_M": count_parameters(net) / 1e6, "optimizer": get_arch(name).optimizer.name,
            "median_s": statistics.median(times), "min_s": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, default=64, help="isotropic patch side (voxels), default 64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per architecture")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--archs", nargs="*", default=available_architectures())
    parser.add_argument("--cpu-sized", action="store_true", help="network sizes of the CPU study preset")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"patch {args.patch}^3, batch {args.batch}, {args.iters} timed iterations after {args.warmup} warm-up, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for name in args.archs:
        rows.append(bench(name, args.patch, args.batch, args.iters, args.warmup, args.cpu_sized))
        r = rows[-1]
        print(f"  done {name}: {r['median_s']:.2f} s/iter", flush=True)
    print("\n| arch | params (M) | optimizer | s/iter (median) | s/iter (min) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['params_M']:.2f} | {r['optimizer']} | {r['median_s']:.2f} | {r['min_s']:.2f} |")


if __name__ == "__main__":
    main()
