"""Two-step inference vs whole-volume inference: wall time, peak memory and Dice, at 1 mm and 0.6 mm.

Both methods use the SAME trained segmentation StageModel (same sliding window, Gaussian blending, overlap 0.5)
and the same post-processing (largest component per side, sides checked in world RAS):

* ``two_step``: :class:`~dentate_research.inference.DentatePredictor` (localizer at its coarse spacing ->
  bounding box + margin -> crop -> segmenter on the crop -> uncrop);
* ``whole_volume``: the segmenter's sliding window over the whole head
  (:func:`~dentate_research.inference.whole_volume.predict_whole_volume`, the one-step method of study T4: sides
  from world x relative to the head centre, as there is no cerebellar mask).

Test scans are whole-head QSM phantoms generated at 1 mm isotropic (``dentate_research.data.phantom`` with a
custom preset, sites' own orientations/units/reconstructions) held out from training; the 0.6 mm versions
are the same scans resampled (image trilinear, truth labels nearest neighbour). Each (method, resolution) runs
in a fresh worker process so that peak memory is not polluted by the other method; times exclude reading and
resampling the input but include every step of inference (also the StageModels' internal resampling).
CPU time (``time.process_time``, all threads of the worker) is reported beside wall time because wall time
on a shared machine depends on the other jobs. Memory: peak RSS above the worker's RSS just before the call
(psutil, sampled every 2 ms), and the worker's lifetime peak RSS (``resource.getrusage``).

Usage (a small model is trained first when ``--model`` is not given; the whole run takes ~10 min on 2 cores)::

    python benchmarks/bench_two_step.py --work /tmp/bench_two_step
    python benchmarks/bench_two_step.py --work /tmp/bench --model MODEL_DIR --manifest DATA/manifest.tsv
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

METHODS = ("two_step", "whole_volume")
BENCH_LOCALIZER = {"arch": "unet", "spacing_mm": 4.0, "patch_size": [32, 32, 32],
                   "arch_kwargs": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}}
BENCH_SEGMENTER = {"arch": "unet", "spacing_mm": 1.0, "patch_size": [32, 32, 32],
                   "arch_kwargs": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}}


class PeakRSS:
    """Context manager: peak resident memory (MB) above the level at entry, sampled by a thread."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak_mb = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._base = self.process.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.process.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20


def load_case(manifest: Path, case_id: str, spacing_mm: float | None):
    """(image Volume, truth labels) of one manifest case, optionally resampled to ``spacing_mm`` isotropic."""
    from dentate_research.data.geometry import resample_to_spacing
    from dentate_research.data.io import load_image, load_label
    from dentate_research.data.manifest import read_manifest

    case = {c.case_id: c for c in read_manifest(manifest)}[case_id]
    image = load_image(case.image)
    truth = load_label(case.label("true"), image)
    if spacing_mm is not None and not np.allclose(image.spacing, spacing_mm):
        image = resample_to_spacing(image, spacing_mm)
        truth = resample_to_spacing(truth, spacing_mm, is_label=True)
    return image, truth.array


def worker(args: argparse.Namespace) -> int:
    """Run one method at one resolution on every test case; write a JSON list of per-case results."""
    import torch

    from dentate_research.data.io import Volume
    from dentate_research.data.laterality import LEFT_DN, RIGHT_DN
    from dentate_research.data.overlap import dice
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError
    from dentate_research.inference.whole_volume import predict_whole_volume

    torch.set_num_threads(args.threads)
    predictor = DentatePredictor.from_model_dir(args.model, device="cpu")
    # warm-up (lazy imports, first-call allocations) on a small blank-ish volume, not timed
    warm = Volume(np.random.default_rng(0).normal(0, 0.01, (40, 40, 40)).astype(np.float32), np.eye(4))
    predictor.segmenter.predict(warm)
    predictor.localizer.predict(warm)
    rows = []
    for case_id in args.cases:
        volume, truth = load_case(args.manifest, case_id, args.resolution)
        status, flags = "ok", []
        with PeakRSS() as mem:
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            if args.method == "two_step":
                try:
                    result = predictor.predict_volume(volume)
                    labels, flags, steps = result.labels, result.flags, result.timings_s
                except SegmentationError as exc:
                    labels, status, steps = np.zeros(volume.shape, np.uint8), f"failed:{exc.reason}", {}
            else:
                whole = predict_whole_volume(predictor.segmenter, volume)
                labels, flags, steps = whole.labels, whole.flags, whole.timings_s
            seconds = time.perf_counter() - t0
            cpu_seconds = time.process_time() - cpu0
        rows.append({
            "case": case_id, "method": args.method, "resolution_mm": args.resolution, "shape": list(volume.shape),
            "voxels_million": round(float(np.prod(volume.shape)) / 1e6, 2), "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3),
            "steps_s": {k: round(v, 3) for k, v in steps.items()}, "peak_rss_above_start_mb": round(mem.peak_mb, 1),
            "dice_left": round(dice(labels == LEFT_DN, truth == LEFT_DN, empty="one"), 4),
            "dice_right": round(dice(labels == RIGHT_DN, truth == RIGHT_DN, empty="one"), 4), "status": status,
            "flags": flags,
        })
        print(json.dumps(rows[-1]), file=sys.stderr)
    lifetime_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["worker_peak_rss_mb"] = round(lifetime_mb, 1)
    Path(args.result).write_text(json.dumps(rows, indent=1))
    return 0


def prepare(work: Path, n_test: int, seed: int, epochs: int, iterations: int, lr: float
            ) -> tuple[Path, Path, list[str]]:
    """Generate 1-mm phantoms; train a small two-step model (test = last ``n_test`` cases, val = the 2 before).

    A stage whose ``WORK/model/<stage>/model.json`` exists is reused.
    """
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.phantom import Preset, generate_dataset
    from dentate_research.training import train_stage
    from dentate_research.training.stage_config import stage_config

    manifest = work / "phantoms_1mm" / "manifest.tsv"
    if not manifest.exists():
        preset = Preset("bench_1mm", 2, in_plane_mm=1.0, max_slice_mm=1.0, fine_mm=1.0)
        generate_dataset(manifest.parent, preset=preset, seed=seed, n_jobs=2, overwrite=True)
    ids = [c.case_id for c in read_manifest(manifest)]
    test_ids = ids[-n_test:]
    train_ids, val_ids = ids[:-n_test - 2], ids[-n_test - 2:-n_test]
    model = work / "model"
    for stage, spec in (("localization", BENCH_LOCALIZER), ("segmentation", BENCH_SEGMENTER)):
        if not (model / stage / "model.json").exists():
            train_stage(stage_config(manifest, stage, model / stage, spec, train_ids=train_ids, val_ids=val_ids,
                                     epochs=epochs, iterations_per_epoch=iterations, seed=seed, lr=lr))
    return manifest, model, test_ids


def summarize(rows: list[dict], out: Path) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    df["dice_mean"] = (df["dice_left"] + df["dice_right"]) / 2
    df.drop(columns=["steps_s", "flags"]).to_csv(out / "bench_two_step_cases.csv", index=False)
    agg = df.groupby(["resolution_mm", "method"]).agg(
        cases=("case", "count"), voxels_million=("voxels_million", "mean"), seconds=("seconds", "mean"),
        cpu_seconds=("cpu_seconds", "mean"),
        peak_rss_above_start_mb=("peak_rss_above_start_mb", "max"), worker_peak_rss_mb=("worker_peak_rss_mb", "max"),
        dice_left=("dice_left", "mean"), dice_right=("dice_right", "mean"), dice_mean=("dice_mean", "mean"))
    lines = ["| resolution (mm) | method | cases | voxels (M) | wall time (s/scan) | CPU time (s/scan) | "
             "peak RSS above start (MB) | worker peak RSS (MB) | Dice left | Dice right |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (res, method), r in agg.iterrows():
        lines.append(f"| {res} | {method} | {r.cases} | {r.voxels_million:.1f} | {r.seconds:.2f} | "
                     f"{r.cpu_seconds:.2f} | {r.peak_rss_above_start_mb:.0f} | {r.worker_peak_rss_mb:.0f} | "
                     f"{r.dice_left:.3f} | {r.dice_right:.3f} |")
    lines += ["", "| resolution (mm) | speed-up, wall time (whole / two-step) | speed-up, CPU time | memory ratio "
              "(whole / two-step peak above start) | Dice mean two-step - whole |", "|---|---|---|---|---|"]
    for res in sorted(df["resolution_mm"].unique(), reverse=True):
        two, whole = agg.loc[(res, "two_step")], agg.loc[(res, "whole_volume")]
        lines.append(f"| {res} | {whole.seconds / two.seconds:.1f}x | {whole.cpu_seconds / two.cpu_seconds:.1f}x | "
                     f"{whole.peak_rss_above_start_mb / max(two.peak_rss_above_start_mb, 1.0):.1f}x | "
                     f"{two.dice_mean - whole.dice_mean:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench_two_step_work"), help="work/output folder")
    parser.add_argument("--model", type=Path, help="two-step model folder (default: train one in WORK/model)")
    parser.add_argument("--manifest", type=Path, help="manifest of 1-mm test scans with label_true")
    parser.add_argument("--cases", nargs="+", help="test case IDs (default: the last --n-test of the manifest)")
    parser.add_argument("--n-test", type=int, default=2, help="held-out test scans (default 2)")
    parser.add_argument("--resolutions", type=float, nargs="+", default=[1.0, 0.6], help="mm, isotropic")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per stage (if training)")
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (if training)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (if training)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the workers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if args.model is None:
        manifest, model, test_ids = prepare(args.work, args.n_test, args.seed, args.epochs, args.iterations, args.lr)
    else:
        if args.manifest is None:
            parser.error("--model needs --manifest (test scans with label_true)")
        from dentate_research.data.manifest import read_manifest

        manifest, model = args.manifest, args.model
        test_ids = [c.case_id for c in read_manifest(manifest)][-args.n_test:]
    test_ids = args.cases or test_ids
    card = json.loads((model / "segmentation" / "model.json").read_text())
    leaked = sorted(set(test_ids) & set(card.get("train_cases", [])))
    if leaked:
        print(f"WARNING: test cases {leaked} were used to train {model}", file=sys.stderr)
    t_prepare = time.perf_counter() - t_start
    rows: list[dict] = []
    for resolution in args.resolutions:
        for method in METHODS:
            result = args.work / f"result_{method}_{resolution}.json"
            cmd = [sys.executable, __file__, "--worker", "--method", method, "--resolution", str(resolution),
                   "--model", str(model), "--manifest", str(manifest), "--result", str(result),
                   "--threads", str(args.threads), "--cases", *test_ids]
            print(f"[bench] {method} at {resolution} mm on {len(test_ids)} scans", file=sys.stderr)
            subprocess.run(cmd, check=True, env={**os.environ, "MPLBACKEND": "Agg"})
            rows.extend(json.loads(result.read_text()))
    table = summarize(rows, args.work)
    header = (f"two-step vs whole-volume inference; model {model}; test scans {test_ids} from {manifest}; "
              f"torch threads {args.threads}; CPU count {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; "
              f"preparation {t_prepare:.0f} s, total {time.perf_counter() - t_start:.0f} s")
    report = header + "\n\n" + table + "\n"
    (args.work / "bench_two_step.md").write_text(report)
    (args.work / "bench_two_step.json").write_text(json.dumps(rows, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
