"""``demo``: the whole pipeline offline in minutes on a CPU, on built-in synthetic QSM phantoms.

1. generate a phantom data set (9 simulated sites) into ``OUT/data``,
2. train a tiny two-step model (localization + U-Net DN segmentation) into ``OUT/model`` on all but one site,
3. segment one scan of the held-out site into ``OUT/segment`` (DentateSeg-style outputs + overlay PNG),
4. print Dice per side against the phantom's ground truth and rater1.

The model is also installed as the default model of ``segment`` (user cache) unless ``--no-install``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_run"), help="output folder (default: demo_run)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small"],
                        help="phantom size preset (default: small, ~45 scans)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per stage (default 10)")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per epoch (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install the trained model as the default model of 'segment'")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.io import DataError

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            print(f"error: {out} exists and is not empty; pass --overwrite or choose another --out", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    try:
        return _run(args, out)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, out: Path) -> int:
    from dentate_research.data.io import load_image, load_label
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.phantom import generate_dataset
    from dentate_research.evaluation.metrics import evaluate_case
    from dentate_research.inference.default_model import train_two_step_model, user_model_dir
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError

    t0 = time.perf_counter()
    print(f"[demo 1/4] generating '{args.preset}' phantoms into {out / 'data'}", flush=True)
    manifest = generate_dataset(out / "data", preset=args.preset, seed=args.seed, n_jobs=2)
    cases = read_manifest(manifest)
    sites = sorted({c.site for c in cases})
    held_out_site = sites[-1]
    train_cases = [c for c in cases if c.site != held_out_site]
    test_case = next(c for c in cases if c.site == held_out_site)
    val_ids = [c.case_id for c in train_cases[:: max(1, len(train_cases) // 4)]][:4]
    train_ids = [c.case_id for c in train_cases if c.case_id not in val_ids]
    t_data = time.perf_counter() - t0

    print(f"[demo 2/4] training a two-step model on {len(train_ids)} scans ({len(sites) - 1} sites), "
          f"validating on {len(val_ids)}; site {held_out_site} is held out", flush=True)
    t0 = time.perf_counter()
    model_dir = train_two_step_model(out / "model", manifest, train_ids=train_ids, val_ids=val_ids,
                                     epochs=args.epochs, iterations_per_epoch=args.iterations, seed=args.seed,
                                     device=args.device)
    t_train = time.perf_counter() - t0

    print(f"[demo 3/4] segmenting {test_case.image.name} (unseen site {held_out_site})", flush=True)
    t0 = time.perf_counter()
    predictor = DentatePredictor.from_model_dir(model_dir, device=args.device)
    try:
        written = predictor.predict_file(test_case.image, out / "segment")
    except SegmentationError as failure:  # loud, like `segment`: the metadata JSON says why
        print(f"FAILED ({failure.reason}): {failure}; see {out / 'segment'}; train longer with --epochs/--iterations",
              file=sys.stderr)
        return 3
    t_seg = time.perf_counter() - t0

    print("[demo 4/4] Dice against the phantom truth and rater1:", flush=True)
    image = load_image(test_case.image)
    pred = load_label(written.paths["seg"], reference=image)
    for rater in ("true", "rater1"):
        rows = evaluate_case(pred, load_label(test_case.label(rater), reference=image), image)
        text = ", ".join(f"{r['side']} {r['dice']:.3f}" for r in rows)
        print(f"  vs {rater:<7} Dice {text}")
        vols = ", ".join(f"{r['side']} {r['volume_pred_mm3']:.0f} mm^3 (ref {r['volume_ref_mm3']:.0f})" for r in rows)
        print(f"  {'':<10} volume {vols}")
    if not args.no_install:
        target = user_model_dir()
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model_dir, target)
        print(f"installed the model as the default for 'segment': {target}")
    print(f"done in {t_data + t_train + t_seg:.0f} s (data {t_data:.0f} s, training {t_train:.0f} s, "
          f"segmentation {t_seg:.1f} s). Outputs: {out / 'segment'}; model: {model_dir}")
    return 0
