"""``demo``: the whole pipeline offline in minutes on a CPU, on built-in synthetic QSM phantoms.

1. generate a phantom data set (9 simulated sites, 1 mm) into ``OUT/data``,
2. train a two-step model with the project's recipe (localizer at 4 mm; U-Net at 1 mm on the localizer's crops,
   one DN class with sides from world x, 48^3 patches, early stopping, a 3-minute wall-clock budget) into
   ``OUT/model`` on all but one site,
3. segment one scan of the held-out site into ``OUT/segment`` (DentateSeg-style outputs + overlay PNG),
4. print Dice per side against the phantom's ground truth and rater1.

The demo model is NOT installed as the default model of ``segment`` unless ``--install`` is given, and it never
replaces a model already installed in the user cache unless ``--replace-installed`` is given too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

# the demo's budget per stage (both also stop on a validation plateau and at their share of --minutes)
DEMO_EPOCHS, DEMO_ITERATIONS = 40, 25
DEMO_TRAINER = {"val_every": 2, "patience": 4, "min_delta": 0.005}
# the segmenter's settings, chosen on the demo's 4 VALIDATION scans under its 3-minute budget
# (benchmarks/bench_demo_recipe.py, README "demo"): 48^3 patches, batch 4, 90 % DN-centred, no domain randomization
# (the default model's `robust` randomization: 0.829 / 0.834 vs 0.850 / 0.854 at this budget, fewer iterations),
# patience 8 validations (with the faster validation it stopped at 650 iterations in ~100 s of its 144 s with
# patience 4: 0.859 / 0.866; patience 8: 850 iterations, 0.864 / 0.871)
DEMO_SEGMENTER = {"patch_size": [48, 48, 48]}
DEMO_SEGMENTER_TRAINER = {"batch_size": 4, "foreground_prob": 0.9, "patience": 8}
DEMO_AUGMENTATION = "default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_run"), help="output folder (default: demo_run)")
    parser.add_argument("--preset", default="demo", choices=["tiny", "demo"],
                        help="phantom data: demo (default; the 1 mm 'cpu' preset with 4 subjects per site, 36 scans) "
                             "or tiny (2 mm, 12 scans, seconds; for tests)")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="wall-clock training budget in minutes for both stages together (default 3; the "
                             "localizer gets 20%%); training also stops earlier on a validation plateau")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"maximal epochs per stage ({DEMO_EPOCHS})")
    parser.add_argument("--iterations", type=int, default=DEMO_ITERATIONS,
                        help=f"iterations per epoch (default {DEMO_ITERATIONS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--install", action="store_true",
                        help="install the trained model as the default model of 'segment' (user cache)")
    parser.add_argument("--replace-installed", action="store_true",
                        help="with --install: replace a model already installed in the user cache")
    parser.add_argument("--no-install", action="store_true", help=argparse.SUPPRESS)  # old flag: now the default
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from dentate_research.data.io import DataError

    out: Path = args.out
    if args.minutes <= 0:
        print(f"error: --minutes must be > 0, got {args.minutes}", file=sys.stderr)
        return 2
    if args.install and not args.replace_installed:
        from dentate_research.inference.default_model import is_model_dir, user_model_dir

        if is_model_dir(user_model_dir()):
            print(f"error: a model is already installed in {user_model_dir()}; add --replace-installed to replace it "
                  "with the demo model, or drop --install", file=sys.stderr)
            return 2
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


def demo_split(cases: list) -> tuple[list[str], list[str], object]:
    """(train IDs, validation IDs, test case): the last site is held out and gives the test scan; every 4th-ish
    scan of the other sites (4 scans) validates (benchmarks/bench_demo_recipe.py chooses settings on them)."""
    sites = sorted({c.site for c in cases})
    train_cases = [c for c in cases if c.site != sites[-1]]
    test_case = next(c for c in cases if c.site == sites[-1])
    val_ids = [c.case_id for c in train_cases[:: max(1, len(train_cases) // 4)]][:4]
    return [c.case_id for c in train_cases if c.case_id not in val_ids], val_ids, test_case


def _run(args: argparse.Namespace, out: Path) -> int:
    from dentate_research.data.io import load_image, load_label
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.phantom import generate_dataset
    from dentate_research.evaluation.metrics import evaluate_case
    from dentate_research.inference.default_model import user_model_dir
    from dentate_research.inference.outputs import segment_file
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError
    from dentate_research.training.two_step import DEFAULT_LOCALIZER, DEFAULT_SEGMENTER, train_two_step_model

    t0 = time.perf_counter()
    print(f"[demo 1/4] generating '{args.preset}' phantoms into {out / 'data'}", flush=True)
    if args.preset == "demo":
        manifest = generate_dataset(out / "data", preset="cpu", seed=args.seed, n_jobs=2, n_subjects_per_site=4)
    else:
        manifest = generate_dataset(out / "data", preset=args.preset, seed=args.seed, n_jobs=2)
    cases = read_manifest(manifest)
    train_ids, val_ids, test_case = demo_split(cases)
    held_out_site, sites = test_case.site, sorted({c.site for c in cases})
    t_data = time.perf_counter() - t0

    print(f"[demo 2/4] training a two-step model on {len(train_ids)} scans ({len(sites) - 1} sites), "
          f"validating on {len(val_ids)}; site {held_out_site} is held out", flush=True)
    t0 = time.perf_counter()
    tiny = args.preset == "tiny"
    localizer = {**DEFAULT_LOCALIZER, "patch_size": [32, 32, 32]}
    segmenter = {**DEFAULT_SEGMENTER, **({"spacing_mm": 2.0, "patch_size": [32, 32, 32]} if tiny else DEMO_SEGMENTER)}
    model_dir = train_two_step_model(
        out / "model", manifest, localizer=localizer, segmenter=segmenter, train_ids=train_ids, val_ids=val_ids,
        epochs=args.epochs, iterations_per_epoch=args.iterations, seed=args.seed, device=args.device,
        label_scheme="merged", augmentation=DEMO_AUGMENTATION, crops_from_localizer=True,
        segmenter_trainer=None if tiny else DEMO_SEGMENTER_TRAINER,
        stage_minutes={"localization": 0.2 * args.minutes, "segmentation": 0.8 * args.minutes},
        trainer=DEMO_TRAINER)
    t_train = time.perf_counter() - t0

    print(f"[demo 3/4] segmenting {test_case.image.name} (unseen site {held_out_site})", flush=True)
    t0 = time.perf_counter()
    predictor = DentatePredictor.from_model_dir(model_dir, device=args.device)
    try:
        written = segment_file(predictor, test_case.image, out / "segment")
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
    if args.install:
        from dentate_research.inference.default_model import install_model

        target = install_model(model_dir, user_model_dir(), overwrite=args.replace_installed)
        print(f"installed the demo model as the default for 'segment': {target}")
    print(f"done in {t_data + t_train + t_seg:.0f} s (data {t_data:.0f} s, training {t_train:.0f} s, "
          f"segmentation {t_seg:.1f} s). Outputs: {out / 'segment'}; model: {model_dir}")
    return 0
