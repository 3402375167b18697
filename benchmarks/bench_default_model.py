"""Score candidate default models side by side on held-out phantoms and on QSM our generator did not make.

Benches (each scan goes through the same ``DentatePredictor`` as ``segment``; 2 threads):

- ``heldout_easy``: the external sites of the CPU study's split (siteH, siteI; 20 scans) of the easy ``cpu``
  phantom preset, against ``rater1`` (and the truth);
- ``heldout_hard``: the same sites of the ``hard`` preset = T5's external hard sites, against ``rater1`` (and the
  truth);
- ``ellipsoid``: 12 scans of ``tests/synthetic_dn.make_scan`` (ellipsoid anatomy, no dipole reconstruction; 1 mm,
  0.8 x 0.8 x 2 mm and 1.2 mm, half stored LAS), against the truth;
- ``lamina``: 12 scans of ``benchmarks/oof_lamina.py`` (written without any code of ``dentate_research``: folded
  DN lamina with a hilum, veins, dipole forward model, TKD / Tikhonov / iterative inversion, 1 mm RAS, 0.8 x 0.8 x
  2 mm LAS, oblique 1.2 mm with partial coverage), seed 0, against the truth;
- ``lamina_s1``: 12 more scans of the same family, seed 1 (other subjects, poses and reconstructions). A failure
  seen on ``lamina`` (scan lamC_000) drove a post-processing change, so ``lamina`` no longer is an untouched test
  of post-processing; ``lamina_s1`` was generated after that change and is.

No candidate may have seen any of these scans; none of them is used to choose a recipe or a threshold (benchmarks
are scored, never tuned on). Per candidate, bench and side: mean, SD and worst Dice, lost sides (Dice < 0.5),
seconds per scan (read + localize + crop + segment + post-process + QC; mean and max), and the QC confusion table
(``flagged`` / ``ok`` vs a scan with a lost side / all sides >= 0.5). On the phantom benches the second rater is
scored like a candidate (``rater2``: its tracing against the same references; no timing, no QC): the agreement
a human reaches on those scans, the ceiling against which the candidates' Dice vs rater1 reads. Writes
``OUT/per_case.csv``,
``OUT/summary.csv``, ``OUT/qc_confusion.csv``, ``OUT/summary.md`` and ``OUT/dice_by_bench.png``.

    python benchmarks/bench_default_model.py --candidate shipped=default \\
        --candidate robust=work_data/default_model_robust --cpu work_data/data_cpu_seed0/manifest.tsv \\
        --hard work_data/data_hard_seed0/manifest.tsv --splits experiments/cpu/splits/splits.json \\
        --out work_data/bench_default_model
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

LOST_DICE = 0.5
"""A side whose Dice is below this is lost (a failed segmentation of that nucleus)."""
ELLIPSOID_SPACINGS = {"1mm": (1.0, 1.0, 1.0), "0.8x0.8x2mm": (0.8, 0.8, 2.0), "1.2mm": (1.2, 1.2, 1.2)}
BENCH_REFERENCE = {"heldout_easy": "rater1", "heldout_hard": "rater1", "ellipsoid": "true", "lamina": "true",
                   "lamina_s1": "true"}
LAMINA_SEEDS = {"lamina": 0, "lamina_s1": 1}


@dataclass
class BenchScan:
    """One scan of a bench: image and reference label files (``{"true": path, "rater1": path}``)."""

    bench: str
    case: str
    image: Path
    labels: dict[str, Path]
    meta: dict[str, object] = field(default_factory=dict)
    second_rater: Path | None = None  # another rater's tracing (phantoms): scored as the `rater2` row


def phantom_scans(bench: str, manifest: Path, case_ids: list[str]) -> list[BenchScan]:
    """Scans of a phantom manifest with their ``true`` and ``rater1`` labels."""
    from dentate_research.data.manifest import read_manifest

    by_id = {c.case_id: c for c in read_manifest(manifest)}
    return [BenchScan(bench, i, by_id[i].image, {r: by_id[i].label(r) for r in ("true", "rater1")},
                      {"site": by_id[i].site, "voxel_size": by_id[i].meta.get("voxel_size")},
                      by_id[i].label("rater2") if "rater2" in by_id[i].labels else None) for i in case_ids]


def ellipsoid_scans(out_dir: Path, seeds: int = 4) -> list[BenchScan]:
    """Write the ellipsoid bench (``tests/synthetic_dn.make_scan``; per voxel size ``seeds`` scans, odd seeds
    stored LAS: same world, x running right-to-left in the array) and list its scans."""
    from dentate_research.data.io import save_nifti
    from tests.synthetic_dn import make_scan

    scans = []
    for tag, spacing in ELLIPSOID_SPACINGS.items():
        for seed in range(seeds):
            image, labels, _, affine = make_scan(1000 + seed, spacing=spacing, max_rot_deg=8.0)
            orientation = "LAS" if seed % 2 else "RAS"
            if orientation == "LAS":
                flip = np.diag([-1.0, 1.0, 1.0, 1.0])
                flip[0, 3] = image.shape[0] - 1
                image, labels, affine = image[::-1].copy(), labels[::-1].copy(), affine @ flip
            case = f"{tag}_{orientation}_{seed}"
            img_path = save_nifti(image, affine, out_dir / f"{case}.nii.gz")
            lab_path = save_nifti(labels, affine, out_dir / f"{case}_dn.nii.gz", is_label=True)
            scans.append(BenchScan("ellipsoid", case, img_path, {"true": lab_path},
                                   {"site": tag, "voxel_size": tag, "orientation": orientation}))
    return scans


def lamina_scans(out_dir: Path, bench: str = "lamina", n_per_site: int = 4) -> list[BenchScan]:
    """Write a lamina bench (``benchmarks/oof_lamina.py``, seed :data:`LAMINA_SEEDS` [bench]) and list its scans."""
    from oof_lamina import write_lamina_bench

    rows = write_lamina_bench(out_dir, n_per_site=n_per_site, seed=LAMINA_SEEDS[bench])  # paths relative to out_dir
    return [BenchScan(bench, str(r["case"]), out_dir / r["image"], {"true": out_dir / r["label"]},
                      {k: v for k, v in r.items() if k not in ("case", "image", "label")}) for r in rows]


def score_rows(candidate: str, scan: BenchScan, labels, volume, **extra: object) -> list[dict]:
    """One row per reference and side: a label map (a Volume on the scan's grid) scored against each of the scan's
    references; ``extra`` (status, flags, side_evidence, seconds) is copied into every row."""
    from dentate_research.data.io import load_label
    from dentate_research.evaluation.metrics import evaluate_case

    rows = []
    for reference, path in scan.labels.items():
        for row in evaluate_case(labels, load_label(path, reference=volume), volume):
            rows.append({"candidate": candidate, "bench": scan.bench, "case": scan.case, **scan.meta,
                         "reference": reference, "side": row["side"], "dice": row["dice"],
                         "volume_pred_mm3": row["volume_pred_mm3"], "volume_ref_mm3": row["volume_ref_mm3"], **extra})
    return rows


def score(name: str, model_dir: str, scans: list[BenchScan], threads: int = 2) -> pd.DataFrame:
    """Segment every scan with one candidate and score each side against each of the scan's references."""
    import torch

    from dentate_research.data.io import Volume, load_image
    from dentate_research.inference.pipeline import DentatePredictor, SegmentationError
    from dentate_research.training.finetune import resolve_init_run

    torch.set_num_threads(threads)
    predictor = DentatePredictor(resolve_init_run(model_dir, "localization"),
                                 resolve_init_run(model_dir, "segmentation"))
    rows = []
    for scan in scans:
        t0 = time.perf_counter()
        volume = load_image(scan.image)
        try:
            result = predictor.predict_volume(volume)
            labels, status, flags = result.labels, result.status, list(result.flags)
            evidence = result.postprocess.side_evidence
        except SegmentationError as failure:
            labels, status, flags, evidence = np.zeros(volume.shape, np.uint8), "failed", [failure.reason], "none"
        seconds = time.perf_counter() - t0
        rows += score_rows(name, scan, Volume(labels, volume.affine), volume, status=status, flags=";".join(flags),
                           side_evidence=evidence, seconds=round(seconds, 3))
        print(f"[bench] {name} {scan.bench} {scan.case}: {status} {seconds:.2f} s", flush=True)
    return pd.DataFrame(rows)


SECOND_RATER = "rater2"
"""The candidate name of the second rater's tracings (:func:`score_second_rater`)."""


def score_second_rater(scans: list[BenchScan]) -> pd.DataFrame:
    """The second rater's tracing of every scan that has one, scored against the scan's references exactly as a
    candidate's labels are (status ``reference``: not a model, no QC, no timing)."""
    from dentate_research.data.io import load_image, load_label

    rows = []
    for scan in scans:
        if scan.second_rater is None:
            continue
        volume = load_image(scan.image)
        rows += score_rows(SECOND_RATER, scan, load_label(scan.second_rater, reference=volume), volume,
                           status="reference", flags="", side_evidence="", seconds=np.nan)
    return pd.DataFrame(rows)


def primary(per_case: pd.DataFrame) -> pd.DataFrame:
    """Rows against each bench's primary reference (:data:`BENCH_REFERENCE`)."""
    return per_case[per_case["reference"] == per_case["bench"].map(BENCH_REFERENCE)]


def summarize(per_case: pd.DataFrame) -> pd.DataFrame:
    """Per candidate, bench and side: n, mean, SD, worst Dice, lost sides and seconds per scan (mean, max)."""
    rows = []
    for (candidate, bench, side), part in primary(per_case).groupby(["candidate", "bench", "side"], sort=False):
        dice = part["dice"].fillna(0.0).astype(float)
        seconds = part.groupby("case")["seconds"].first()
        rows.append({"candidate": candidate, "bench": bench, "reference": BENCH_REFERENCE[bench], "side": side,
                     "n": len(dice), "mean": dice.mean(), "sd": dice.std(ddof=1), "worst": dice.min(),
                     "lost_sides": int((dice < LOST_DICE).sum()), "seconds_mean": seconds.mean(),
                     "seconds_max": seconds.max()})
    return pd.DataFrame(rows)


def qc_confusion(per_case: pd.DataFrame) -> pd.DataFrame:
    """Per candidate and bench: scans by QC outcome (``flagged`` incl. failed / ``ok``) and truth (a lost side or
    not). ``ok_with_lost_side`` is the number that must be 0."""
    models = per_case[per_case["status"] != "reference"]  # the second rater is no model: no QC outcome
    per_scan = primary(models).assign(lost=lambda d: d["dice"].fillna(0.0) < LOST_DICE)
    per_scan = per_scan.groupby(["candidate", "bench", "case"], sort=False).agg(
        lost=("lost", "any"), status=("status", "first")).reset_index()
    per_scan["qc"] = np.where(per_scan["status"] == "ok", "ok", "flagged")
    rows = []
    for (candidate, bench), part in per_scan.groupby(["candidate", "bench"], sort=False):
        count = {(q, lost): int(((part["qc"] == q) & (part["lost"] == lost)).sum())
                 for q in ("flagged", "ok") for lost in (True, False)}
        rows.append({"candidate": candidate, "bench": bench, "flagged_with_lost_side": count[("flagged", True)],
                     "flagged_all_sides_good": count[("flagged", False)], "ok_with_lost_side": count[("ok", True)],
                     "ok_all_sides_good": count[("ok", False)]})
    return pd.DataFrame(rows)


def tables_markdown(summary: pd.DataFrame, confusion: pd.DataFrame, with_candidate: bool = True) -> list[str]:
    """The summary and the QC confusion as markdown table lines (without the candidate column for one model)."""
    lead = (lambda r: f"| {r.candidate} | {r.bench} |") if with_candidate else (lambda r: f"| {r.bench} |")
    head = "| candidate | bench |" if with_candidate else "| bench |"
    rule = "|---|---|" if with_candidate else "|---|"
    lines = [f"{head} reference | side | n | Dice mean +/- SD | worst | lost sides (< 0.5) | s/scan mean / max |",
             f"{rule}---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        timing = "-" if np.isnan(r.seconds_mean) else f"{r.seconds_mean:.2f} / {r.seconds_max:.2f}"
        lines.append(f"{lead(r)} {r.reference} | {r.side} | {r.n} | {r.mean:.3f} +/- {r.sd:.3f} | {r.worst:.3f} | "
                     f"{r.lost_sides} | {timing} |")
    lines += ["", "QC confusion (scans): flagged or failed vs ok, by whether a side was lost (Dice < 0.5).", "",
              f"{head} flagged, lost side | flagged, all good | ok, lost side | ok, all good |",
              f"{rule}---|---|---|---|"]
    for r in confusion.itertuples():
        lines.append(f"{lead(r)} {r.flagged_with_lost_side} | {r.flagged_all_sides_good} | {r.ok_with_lost_side} | "
                     f"{r.ok_all_sides_good} |")
    return lines


def markdown(summary: pd.DataFrame, confusion: pd.DataFrame, command: str, load: tuple[float, float]) -> str:
    lines = [f"Made by `{command}` (load average {load[0]:.2f} before, {load[1]:.2f} after).", ""]
    return "\n".join(lines + tables_markdown(summary, confusion)) + "\n"


def plot(per_case: pd.DataFrame, path: Path) -> None:
    """Dice per scan and side, one panel per bench, candidates side by side (the lost-side line at 0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = primary(per_case)
    benches = list(dict.fromkeys(data["bench"]))
    candidates = list(dict.fromkeys(data["candidate"]))
    fig, axes = plt.subplots(1, len(benches), figsize=(3.2 * len(benches), 3.4), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, bench in zip(axes[0], benches, strict=True):
        for i, candidate in enumerate(candidates):
            for j, (side, colour) in enumerate((("left", "tab:blue"), ("right", "tab:orange"))):
                dice = data[(data.bench == bench) & (data.candidate == candidate) & (data.side == side)]["dice"]
                x = i + (j - 0.5) * 0.3 + rng.uniform(-0.06, 0.06, len(dice))
                ax.scatter(x, dice.fillna(0.0), s=12, color=colour, alpha=0.75, label=side if i == 0 else None)
        ax.axhline(LOST_DICE, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(candidates)), candidates, rotation=30, ha="right")
        ax.set_title(f"{bench} (vs {BENCH_REFERENCE[bench]})", fontsize=9)
        ax.set_ylim(-0.03, 1.0)
    axes[0][0].set_ylabel("Dice per scan")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", action="append", required=True,
                        help="NAME=MODEL_DIR (a two-step model folder, or 'default' for the shipped model)")
    parser.add_argument("--cpu", type=Path, help="manifest of the easy `cpu` phantom preset (heldout_easy)")
    parser.add_argument("--hard", type=Path, help="manifest of the `hard` phantom preset (heldout_hard)")
    parser.add_argument("--splits", type=Path, help="split file whose external_test scans are held out")
    parser.add_argument("--benches", nargs="+", default=list(BENCH_REFERENCE), choices=list(BENCH_REFERENCE))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        parser.error(f"--out {args.out} is not empty; pass --overwrite to replace its results")
    args.out.mkdir(parents=True, exist_ok=True)  # before hours of scoring, not after

    import json

    external = json.loads(args.splits.read_text())["external_test"] if args.splits else []
    scans: list[BenchScan] = []
    for bench in args.benches:
        if bench in ("heldout_easy", "heldout_hard"):
            manifest = args.cpu if bench == "heldout_easy" else args.hard
            if manifest is None or not external:
                parser.error(f"bench {bench} needs --{'cpu' if bench == 'heldout_easy' else 'hard'} and --splits")
            scans += phantom_scans(bench, manifest, external)
        elif bench == "ellipsoid":
            scans += ellipsoid_scans(args.out / "scans" / "ellipsoid")
        else:
            scans += lamina_scans(args.out / "scans" / bench, bench)
    load_before = os.getloadavg()[0]
    tables = []
    for spec in args.candidate:
        name, model_dir = spec.split("=", 1)
        tables.append(score(name, model_dir, scans, args.threads))
    load_after = os.getloadavg()[0]
    if any(scan.second_rater is not None for scan in scans):
        tables.append(score_second_rater(scans))
    per_case = pd.concat(tables, ignore_index=True)
    summary, confusion = summarize(per_case), qc_confusion(per_case)
    per_case.to_csv(args.out / "per_case.csv", index=False)
    summary.round(4).to_csv(args.out / "summary.csv", index=False)
    confusion.to_csv(args.out / "qc_confusion.csv", index=False)
    command = "python benchmarks/bench_default_model.py " + " ".join(sys.argv[1:])
    text = markdown(summary, confusion, command, (load_before, load_after))
    (args.out / "summary.md").write_text(text)
    plot(per_case, args.out / "dice_by_bench.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
