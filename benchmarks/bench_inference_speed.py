"""Segmentation-stage inference speed on CPU: variants of the sliding-window pass measured side by side, one run.

The segmentation network of a two-step model (default: the shipped default model) runs ``predict_probabilities``
on the real crops of a few scans (cut by the model's own localizer, resampled and normalized exactly as
``segment`` does), each variant interleaved with the others over ``--rounds`` rounds so that load drifts hit all of
them alike. Variants: float32 in the default memory layout (the reference, 1.00; each variant starts from that
layout, whatever the loader chose), channels_last_3d memory format, bf16 autocast, ``sw_batch_size`` 2 / 4, less
window overlap, larger windows (roi 96^3 / 128^3), and the same with the left-right TTA pass (``tta=lr_swap``, two
passes). Reports seconds per scan (median over rounds), the ratio to float32 and the largest probability difference
to float32 (so a faster variant that changes the output shows it). The load average is printed before and after.

    python benchmarks/bench_inference_speed.py --model dentate_research/assets/default_model --images \\
        work_data/data_cpu_seed0/siteA/siteA_sub003_qsm.nii.gz work_data/data_hard_seed0/siteC/siteC_sub004_qsm.nii.gz
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("dentate_research/assets/default_model"))
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="QSM NIfTI files (1 mm)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from dentate_research.data.geometry import crop
    from dentate_research.data.io import load_image
    from dentate_research.inference.pipeline import DentatePredictor
    from dentate_research.runtime.crops import crop_box_around, localize
    from dentate_research.runtime.inferer import predict_probabilities
    from dentate_research.runtime.normalization import normalize_intensity
    from dentate_research.training.finetune import resolve_init_run

    torch.set_num_threads(args.threads)
    predictor = DentatePredictor(resolve_init_run(str(args.model), "localization"),
                                 resolve_init_run(str(args.model), "segmentation"))
    segmenter = predictor.segmenter
    images = []
    for path in args.images:  # the crop segment() cuts: localizer mask, margin, at least one patch
        volume = load_image(path)
        mask = localize(predictor.localizer, volume).mask
        box = crop_box_around(mask, volume.affine, predictor.margin_mm, predictor.min_crop_mm)
        grid = segmenter._to_network_grid(crop(volume, box))
        images.append(normalize_intensity(grid.array, **segmenter.card.normalization))
    print(f"{len(images)} crops on the network grid: {[im.shape for im in images]} voxels; "
          f"load average before {os.getloadavg()[0]:.2f}", flush=True)

    base = replace(segmenter.settings, precision="float32")  # the reference; a card may say bf16
    network = segmenter.network.to(memory_format=torch.contiguous_format)  # the loader stores channels_last_3d
    variants = {
        "float32": (base, False, False),
        "channels_last_3d": (base, True, False),
        "bf16": (base, False, True),
        "bf16 + channels_last_3d": (base, True, True),
        "sw_batch_size 2": (replace(base, sw_batch_size=2), False, False),
        "sw_batch_size 4": (replace(base, sw_batch_size=4), False, False),
        # fewer, larger windows: the same convolutions over less overlap (a network with batch norm in eval mode
        # is translation-equivariant away from the borders)
        "overlap 0.25": (replace(base, overlap=0.25), False, False),
        "roi 96^3": (replace(base, roi_size=(96, 96, 96)), False, False),
        "roi 128^3": (replace(base, roi_size=(128, 128, 128)), False, False),
        "tta lr_swap float32": (replace(base, tta="lr_swap"), False, False),
        "tta lr_swap bf16 + channels_last_3d": (replace(base, tta="lr_swap"), True, True),
    }

    def run(settings, channels_last: bool, bf16: bool) -> tuple[float, list[np.ndarray]]:
        memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        network.to(memory_format=memory_format)
        if bf16:  # the library's inferer.precision=bf16 (float32 on a CPU without native bf16: ratio ~1, change 0)
            settings = replace(settings, precision="bf16")
        t0 = time.perf_counter()
        outs = [predict_probabilities(network, im, settings, "cpu", lateralized=segmenter.lateralized)
                for im in images]
        seconds = (time.perf_counter() - t0) / len(images)
        network.to(memory_format=torch.contiguous_format)
        return seconds, outs

    times: dict[str, list[float]] = {name: [] for name in variants}
    diffs: dict[str, float] = {}
    reference = run(*variants["float32"])[1]  # warm-up and the float32 output
    for _ in range(args.rounds):
        for name, variant in variants.items():
            seconds, outs = run(*variant)
            times[name].append(seconds)
            diffs[name] = max(float(np.abs(a - b).max()) for a, b in zip(outs, reference, strict=True))
    ref = float(np.median(times["float32"]))
    print(f"{'variant':40s} {'s/scan':>7s} {'ratio':>6s} {'max |p - p_float32|':>20s}")
    for name in variants:
        med = float(np.median(times[name]))
        print(f"{name:40s} {med:7.3f} {med / ref:6.2f} {diffs[name]:20.4f}")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
