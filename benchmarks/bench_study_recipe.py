"""Choose a study's training recipe on validation only: variants of one architecture's fold-0 segmentation run,
composed exactly as ``reproduce`` composes it, side by side in one process.

Every variant is the run ``reproduce experiment=NAME`` would train for ``--arch`` on fold ``--fold`` (the same data,
split file, label rater, crops of the study's own fold localizer, ``train_overrides`` and ``arch_overrides``),
plus the variant's extra Hydra overrides; the variants train one after the other (never two trainings at once:
on 2 shared cores they slow each other 7-10x). Only the fold's VALIDATION scans are ever scored: the curve of each
run (its metrics.csv: the inference code path on the validation crops) and its selected checkpoint. The internal
and external test sets are never read, so a recipe chosen here does not tune on the study's tables.

    python benchmarks/bench_study_recipe.py --experiment cpu --work work_data/recipe_cpu --arch unet \\
        --variant study= --variant fullres='arch.kwargs.channels=[16,32,64,128,256]','arch.kwargs.strides=[1,2,2,2]'

``--variant NAME=OVERRIDE,OVERRIDE`` (an empty list = the study's run as configured). ``--data-dir`` reuses phantoms
already generated with the study's preset, seed and subjects per site (its dataset_summary.json must say so). Writes
WORK/recipes/convergence.csv (one row per validation), WORK/recipes/summary.csv and WORK/recipes/convergence.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_convergence import plot, validation_curve  # noqa: E402

from dentate_research.cli.reproduce import compose_train_config, settings_from_config  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=a=1,b=[1,2]`` -> (NAME, ['a=1', 'b=[1,2]']): commas inside brackets belong to the value."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant '{text}': expected NAME=OVERRIDE[,OVERRIDE...]")
    overrides, depth, current = [], 0, ""
    for ch in rest:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            overrides.append(current)
            current = ""
        else:
            current += ch
    if current:
        overrides.append(current)
    return name, [o for o in (o.strip() for o in overrides) if o]


def subjects_per_site(settings) -> list[int]:
    """The study's subjects per site, in SITE_PROFILES order (``data.n_subjects_per_site`` or the preset's)."""
    from dentate_research.data.phantom import PRESETS, SITE_PROFILES

    counts = settings.data.n_subjects_per_site or PRESETS[settings.data.preset].n_subjects_per_site
    return [counts] * len(SITE_PROFILES) if isinstance(counts, int) else list(counts)


def make_runner(args: argparse.Namespace):
    """A StudyRunner of the experiment whose work folder and tables folder are both inside ``--work``."""
    from dentate_research.schema import compose
    from dentate_research.studies.runner import StudyRunner

    cfg = compose("reproduce/reproduce", [f"experiment={args.experiment}", f"work_root={args.work}",
                                f"out_root={args.work / 'study_out'}", *args.study_override])
    settings = settings_from_config(cfg, command="benchmarks/bench_study_recipe.py")
    if args.data_dir is not None:
        summary_file = args.data_dir / "dataset_summary.json"
        made = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        made_as = ((made.get("preset") or {}).get("name"), made.get("seed"),
                   [site.get("n_cases") for site in (made.get("sites") or {}).values()])
        wanted = (settings.data.preset, settings.data.seed, subjects_per_site(settings))
        if made_as != wanted:
            raise SystemExit(f"error: --data-dir {args.data_dir}: {summary_file.name} says preset, seed, subjects "
                             f"per site {made_as}; the study '{settings.name}' uses {wanted}")
        target = settings.phantom_data_dir
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(args.data_dir.resolve(), target_is_directory=True)
    runner = StudyRunner(settings, compose_train_config)
    runner.prepare_data()
    return runner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="cpu", help="reproduce preset (configs/reproduce/experiment)")
    parser.add_argument("--work", type=Path, required=True, help="work folder (data link, localizer, variant runs)")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME=OVERRIDE,OVERRIDE (Hydra overrides added to the study's run; may be empty)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="phantoms already generated with the study's preset and seed (linked, not copied)")
    parser.add_argument("--study-override", action="append", default=[], help="override of the reproduce config")
    args = parser.parse_args()
    from dentate_research.logs import console_logging
    from dentate_research.training import train_stage

    console_logging()
    args.work = args.work.resolve()
    runner = make_runner(args)
    localizer = runner.localizer(args.fold)
    out = args.work / "recipes"
    out.mkdir(parents=True, exist_ok=True)
    curves, summary = [], []
    for name, extra in args.variant:
        run_dir = out / name
        load_before = os.getloadavg()[0]
        if not runner.run_finished(run_dir):
            overrides = [*runner.train_overrides("segmentation", args.arch, args.fold, localizer), *extra,
                         f"paths.run_dir={run_dir}"]
            print(f"[recipe] {name}: {' '.join(overrides)}", flush=True)
            if run_dir.exists():
                raise SystemExit(f"error: {run_dir} holds an unfinished run; remove it to train variant '{name}' "
                                 "again")
            t0 = time.perf_counter()
            train_stage(compose_train_config(overrides))
            print(f"[recipe] {name}: trained in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        else:
            print(f"[recipe] {name}: reusing {run_dir}", flush=True)
        val = validation_curve(run_dir, name)
        curves.append(val)
        info = json.loads((run_dir / "run_info.json").read_text())
        s = info.get("training_summary", {})
        best = s.get("best") or {}
        iterations = s.get("iterations_run")
        summary.append({
            "recipe": name, "overrides": " ".join(extra), "stop_reason": s.get("stop_reason"),
            "iterations_run": iterations, "best_val_dice_mean": best.get("value"),
            "best_at_iteration": best.get("iteration"), "best_at_wall_s": best.get("wall_time_s"),
            "last_val_dice_left": float(val["val_dice_left"].iloc[-1]),
            "last_val_dice_right": float(val["val_dice_right"].iloc[-1]),
            "train_min": info["timings_s"]["train"] / 60,
            "s_per_iteration": info["timings_s"]["train"] / iterations if iterations else None,
            "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)})
        print(f"[recipe] {name}: {summary[-1]}", flush=True)
    curves_df = pd.concat(curves, ignore_index=True)
    curves_df.to_csv(out / "convergence.csv", index=False)
    table = pd.DataFrame(summary)
    table.to_csv(out / "summary.csv", index=False)
    plot(curves_df, out / "convergence.png")
    print(table.drop(columns=["overrides"]).to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {out / 'summary.csv'}, {out / 'convergence.csv'}, {out / 'convergence.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
