"""Training throughput of the default segmenter recipe on CPU: options side by side in one run, as ratios.

What one training iteration of the MONAI loop costs (``training/monai_loop.py``): drawing and augmenting a batch
(``PatchSampler`` + ``Augmenter``, numpy/MONAI on the main thread) and the network step (forward, DiceCE loss,
backward, AdamW step). Measured here for the default segmenter (U-Net 16-128 channels, 64^3 patches, batch 2,
one merged DN class) on toy crops (``training/toy_data.py``, 1 mm, the size of a cerebellum crop):

- batch preparation per augmentation preset (``none``, ``default``, ``robust``);
- the network step in float32 with the default memory format (the loop's setting before this benchmark), with the
  channels_last_3d memory format (``trainer.channels_last``), with bf16 autocast on CPU (``trainer.amp``), both,
  and ``torch.compile`` (compile time reported apart), at 1 and 2 threads;
- whole iterations (robust batch + fp32 step) with the batch prepared in the same thread or prefetched by a
  background thread while the network steps;
- one step of nnU-Net's network for the CPU study's plan in float32 (nnU-Net's own CPU step) and under bf16
  autocast (what ``DentateNnUNetTrainer.train_step`` does with ``trainer.amp`` on a CPU with native bf16).

Variants are run interleaved (round robin over ``--rounds``) so that drift in the machine's load hits all of
them alike; the table gives the median seconds and the ratio to the fp32 baseline; the load average is printed
before and after. One job at a time on the machine.

    python benchmarks/bench_train_speed.py --rounds 5 --iters 4
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss

from dentate_research.models import build_network
from dentate_research.schema import AugmentationSettings, compose, trainer_settings
from dentate_research.training.augmentation import Augmenter
from dentate_research.training.datasets import PatchSampler
from dentate_research.training.monai_loop import make_optimizer
from dentate_research.training.preprocessing import StageSample
from dentate_research.training.toy_data import make_toy_case
from dentate_research.training.two_step import DEFAULT_SEGMENTER

PATCH = tuple(DEFAULT_SEGMENTER["patch_size"])


def toy_crops(n: int, seed: int = 0) -> list[StageSample]:
    """``n`` cerebellum-sized 1 mm crops (96 x 80 x 72 voxels) with DN labels, RAS."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        image, labels, _, affine = make_toy_case((96, 80, 72), 1.0, rng)
        image = (image - image.mean()) / image.std()  # z-scored like the stage's normalization
        samples.append(StageSample(case_id=f"toy{i}", image=image, label=labels, affine=affine))
    return samples


def augmentation(name: str) -> AugmentationSettings:
    cfg = compose("train", ["arch=unet", f"augmentation={name}"])
    from omegaconf import OmegaConf

    return AugmentationSettings.from_dict(OmegaConf.to_container(cfg.augmentation, resolve=True))


def sampler(samples: list[StageSample], aug: str, batch: int, seed: int = 0) -> PatchSampler:
    return PatchSampler(samples, PATCH, batch, 0.33, Augmenter(augmentation(aug), lateralized_labels=False, seed=seed),
                        seed, merge_labels=True)


class Step:
    """One network step variant: memory format, autocast, compile."""

    def __init__(self, channels_last: bool = False, bf16: bool = False, compiled: bool = False):
        torch.manual_seed(0)
        self.net = build_network(DEFAULT_SEGMENTER["arch"], 1, 2, PATCH, DEFAULT_SEGMENTER["arch_kwargs"])
        self.channels_last, self.bf16 = channels_last, bf16
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.optimizer = make_optimizer(self.net.parameters(), "unet", trainer_settings({}))
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
        self.forward: Callable = torch.compile(self.net) if compiled else self.net
        self.net.train()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(x)
            loss = self.loss_fn(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12.0)
        self.optimizer.step()


class NnUNetStep:
    """One step of nnU-Net's network for the CPU study's plan (PlainConvUNet, 16-128 features, 4 stages, 2 convs
    per stage, deep supervision), with or without bf16 autocast (``DentateNnUNetTrainer.train_step`` on CPU)."""

    def __init__(self, bf16: bool = False):
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        torch.manual_seed(0)
        self.net = PlainConvUNet(1, 4, [16, 32, 64, 128], torch.nn.Conv3d, 3, [1, 2, 2, 2], [2, 2, 2, 2], 2,
                                 [2, 2, 2], True, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None,
                                 torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=True)
        self.bf16 = bf16
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
        self.net.train()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.net(x)  # one output per decoder resolution; every head trained, as nnU-Net does
            loss = sum(torch.nn.functional.cross_entropy(o.float(), torch.nn.functional.interpolate(
                y.float(), size=o.shape[2:], mode="nearest")[:, 0].long()) for o in outputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12.0)
        self.optimizer.step()


def timed(fn: Callable[[], object], iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def prefetched_iterations(source: PatchSampler, step: Step, iters: int) -> float:
    """Seconds for ``iters`` iterations with the next batch prepared by a background thread (queue depth 2)."""
    batches: queue.Queue = queue.Queue(maxsize=2)

    def produce() -> None:
        for _ in range(iters):
            batches.put(source.next_batch())

    worker = threading.Thread(target=produce, daemon=True)
    t0 = time.perf_counter()
    worker.start()
    for _ in range(iters):
        step(*batches.get())
    worker.join()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds over the variants")
    parser.add_argument("--iters", type=int, default=4, help="timed iterations per variant and round")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average before {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    samples = toy_crops(8)
    samplers = {name: sampler(samples, name, args.batch) for name in ("none", "default", "robust")}
    fixed = samplers["none"].next_batch()
    steps = {"fp32": Step(), "channels_last_3d": Step(channels_last=True), "bf16 autocast": Step(bf16=True),
             "bf16 + channels_last_3d": Step(channels_last=True, bf16=True)}
    nnunet_steps = {"nnU-Net CPU plan, fp32 (nnU-Net's own CPU step)": NnUNetStep(),
                    "nnU-Net CPU plan, bf16 autocast (trainer.amp)": NnUNetStep(bf16=True)}
    if not args.no_compile:
        compiled = Step(compiled=True)
        t0 = time.perf_counter()
        compiled(*fixed)
        print(f"torch.compile: first step (compilation) {time.perf_counter() - t0:.1f} s", flush=True)
        steps["torch.compile (fp32)"] = compiled
    for step in [*steps.values(), *nnunet_steps.values()]:  # warm-up (oneDNN primitive caches, allocator)
        step(*fixed)
    results: dict[str, list[float]] = {}

    def record(name: str, values: list[float]) -> None:
        results.setdefault(name, []).extend(values)

    robust, base = samplers["robust"], steps["fp32"]
    for r in range(args.rounds):
        for name, smp in samplers.items():
            record(f"batch: augmentation={name}", timed(smp.next_batch, args.iters))
        for threads in (2, 1):
            torch.set_num_threads(threads)
            for name, step in steps.items():
                if threads == 1 and name != "fp32":
                    continue
                record(f"step: {name}, {threads} threads", timed(lambda s=step: s(*fixed), args.iters))
        torch.set_num_threads(2)
        for name, step in nnunet_steps.items():
            record(f"step: {name}", timed(lambda s=step: s(*fixed), args.iters))
        record("iteration: robust batch + fp32 step, same thread",
               timed(lambda: base(*robust.next_batch()), args.iters))
        record("iteration: robust batch prefetched in a thread + fp32 step",
               [prefetched_iterations(robust, base, args.iters)] * args.iters)
        best = steps.get("bf16 + channels_last_3d")
        record("iteration: robust batch prefetched + bf16 + channels_last_3d step",
               [prefetched_iterations(robust, best, args.iters)] * args.iters)
        print(f"  round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    load_after = os.getloadavg()
    ref_step = statistics.median(results["step: fp32, 2 threads"])
    ref_iter = statistics.median(results["iteration: robust batch + fp32 step, same thread"])
    ref_nnunet = statistics.median(results["step: nnU-Net CPU plan, fp32 (nnU-Net's own CPU step)"])
    print(f"\nU-Net 16-128, patch {PATCH[0]}^3, batch {args.batch}; {args.rounds} rounds x {args.iters} iterations; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}\n")
    print("| what | median s | ratio to baseline |\n|---|---|---|")
    for name, values in results.items():
        ref = ref_iter if name.startswith("iteration") else ref_nnunet if "nnU-Net" in name else ref_step
        ratio = "" if name.startswith("batch") else f"{statistics.median(values) / ref:.2f}"
        print(f"| {name} | {statistics.median(values):.3f} | {ratio} |")
    print("\nbaselines: 'step: fp32, 2 threads' for steps; 'iteration: robust batch + fp32 step, same thread' for "
          "iterations; the nnU-Net fp32 step for the nnU-Net steps")


if __name__ == "__main__":
    main()
