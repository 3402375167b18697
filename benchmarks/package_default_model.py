"""Package a trained two-step model as the shipped default model, with a model card made from its benchmark.

The default model of ``segment`` (``dentate_research/assets/default_model``) is chosen by
``benchmarks/bench_default_model.py``, which scores candidates side by side on held-out phantom sites and on QSM our
generator did not make. This script copies the chosen model's inference files into ``--out`` (through
``install_model``, as ``demo --install`` does) and writes ``MODEL_CARD.md`` (training data, recipe, learning curve,
the benchmark's figures for this candidate) and ``evaluation.csv`` (the candidate's per-scan rows of the benchmark).
Nothing is measured here, so the card shows exactly the benchmark's numbers.

    python benchmarks/package_default_model.py --model work_data/default_model_refined \\
        --bench work_data/bench_refined --candidate refined \\
        --out dentate_research/assets/default_model --overwrite
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def stop_text(run: Path) -> str:
    """How a stage's training ended, from its run_info.json (early stopping or the wall-clock cap)."""
    summary = json.loads((run / "run_info.json").read_text()).get("training_summary") or {}
    best = summary.get("best") or {}
    return (f"stopped: {summary.get('stop_reason')} after {summary.get('iterations_run')} iterations; best "
            f"validation {best.get('value', float('nan')):.3f} at iteration {best.get('iteration')} "
            f"({best.get('wall_time_s', float('nan')) / 60:.1f} min)")


def learning_curve(run: Path, column: str) -> str:
    """Validation score vs iterations and wall time (minutes), one entry per validation."""
    metrics = pd.read_csv(run / "metrics.csv")
    rows = metrics[metrics[column].notna() & metrics["wall_time_s"].notna()]
    return ", ".join(f"{r[column]:.3f} ({int(r['iteration'])} it, {r['wall_time_s'] / 60:.1f} min)"
                     for _, r in rows.iterrows())


def training_data(seg_card: dict, config: dict) -> str:
    """Which scans trained the model: presets and sites of its manifest's training and validation cases."""
    manifest = Path(config["data"]["manifest"])
    table = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    used = table[table["case_id"].isin(seg_card["train_cases"] + seg_card["val_cases"])]
    presets = sorted(used["preset"].unique()) if "preset" in used.columns else ["(no preset column)"]
    return (f"- manifest: `{manifest.name}` ({len(used)} scans of the phantom presets {', '.join(presets)}; sites "
            f"{', '.join(sorted(used['site'].unique()))}; the held-out sites and the internal test subjects are "
            "not in it)\n"
            f"- segmenter: {len(seg_card['train_cases'])} training scans, {len(seg_card['val_cases'])} validation "
            f"scans (subject-level: a subject's scans of every preset are on one side; reference "
            f"`{seg_card['label_rater']}`)")


def segmenter_log(model: Path) -> dict:
    """The segmentation entry of ``training_log.json`` (written by ``benchmarks/train_default_model.py``), or {}."""
    log = model / "training_log.json"
    return json.loads(log.read_text()).get("segmentation", {}) if log.is_file() else {}


def localizer_origin(model: Path) -> str:
    """Where the localizer came from when ``train_default_model.py --localizer-from`` copied it instead of training
    one (looked up through the ``--refine-from`` snapshots), as card text; empty for a localizer trained here."""
    from train_default_model import SNAPSHOT

    current = model
    for _ in range(10):  # a chain of refinements; 10 guards a cycle
        log_file = current / "training_log.json"
        entry = json.loads(log_file.read_text()).get("localization", {}) if log_file.is_file() else {}
        if entry.get("copied_from"):
            commit = f" at commit {entry['commit']}" if entry.get("commit") else ""
            return f" (trained for an earlier default model, copied unchanged from `{entry['copied_from']}`{commit})"
        if entry or not (current / SNAPSHOT).is_dir():
            return ""
        current = current / SNAPSHOT
    return ""


def inferer_changes(model: Path) -> list[dict]:
    """The inference-setting changes made after training (``with_inferer.py``), newest first (each record carries
    the earlier ones under ``earlier``); empty for a model as trained."""
    changes_file = model / "inferer_changes.json"
    records, record = [], json.loads(changes_file.read_text()) if changes_file.exists() else None
    while record:
        records.append(record)
        record = record.get("earlier")
    return records


def trained_name(model: Path) -> str:
    """The name of the training run behind ``model``: a copy with other inference settings is named after the
    model the first copy was made from."""
    records = inferer_changes(model)
    return Path(records[-1]["source"]).name if records else model.name


def refinement_history(model: Path) -> list[str]:
    """One card line per earlier segmenter phase (``--refine-from`` chains), oldest first: how each phase ended
    and its validation curve, and how the next continued it (learning-rate decay, extra data, precision)."""
    from train_default_model import SNAPSHOT

    lines: list[str] = []
    current, current_name = model, trained_name(model)
    for _ in range(10):  # a chain of refinements; 10 guards a cycle
        log = segmenter_log(current)
        if not log.get("refined_from"):
            break
        # the continued model as it was when this phase started (train_default_model.snapshot_source)
        previous = current / SNAPSHOT
        source = json.loads((previous / "source.json").read_text())
        extra = log.get("extra_train") or {}
        from omegaconf import OmegaConf

        val_every = int(OmegaConf.load(current / "segmentation" / "config.yaml").trainer.val_every)
        validations = log["epochs"] // max(1, val_every)  # validations in the phase's budget
        how = (f"continued from the best weights of `{source['name']}` with a fresh poly learning-rate decay from "
               f"{log['lr']:g} to 0 over {log['epochs']} x 50 iterations"
               + (f", early stopping after {log['patience']} validations without a gain > 0.005"
                  if log.get("patience") and log["patience"] < validations else "")
               + (f", training data plus {', '.join(f'`{k}` ({v})' for k, v in extra.items())}" if extra else "")
               + (", bf16 autocast + channels_last_3d" if log.get("amp") and log.get("channels_last") else ""))
        lines.insert(0, f"- segmenter, phase `{current_name}`: {how}")
        commit = source.get("commit")
        seg = previous / "segmentation"
        curve = learning_curve(seg, "val_dice_mean")
        origin = (f" (the default model shipped at commit {commit}; its own earlier phases in `git show "
                  f"{commit}:dentate_research/assets/default_model/MODEL_CARD.md`)" if commit else "")
        lines.insert(0, f"- segmenter, phase `{source['name']}`{origin}: {stop_text(seg)}; validation mean Dice: "
                        f"{curve}")
        current, current_name = previous, source["name"]
    return lines


def inference_text(model: Path, cards: dict[str, dict]) -> list[str]:
    """The inference settings of both stages, and the changes made after training (``with_inferer.py``)."""
    keys = ("tta", "precision", "sw_batch_size", "overlap", "mode")
    shown = {stage: {k: cards[stage]["inferer"].get(k) for k in keys} for stage in ("segmentation", "localization")}
    lines = [f"- inference: segmenter {shown['segmentation']}, localizer {shown['localization']}"]
    for record in inferer_changes(model):
        changed = "; ".join(f"{stage} {key} {c['from']} -> {c['to']}" for stage, keys_changed in
                            record["changes"].items() for key, c in keys_changed.items())
        reason = f": {record['reason']}" if record.get("reason") else ""
        lines.append(f"- inference settings changed after training ({changed}) by `{record['command']}`{reason}")
    return lines


def card_text(model: Path, bench: Path, candidate: str, command: str) -> str:
    from bench_default_model import tables_markdown
    from omegaconf import OmegaConf

    loc, seg = model / "localization", model / "segmentation"
    seg_card = json.loads((seg / "model.json").read_text())
    loc_card = json.loads((loc / "model.json").read_text())
    config = OmegaConf.to_container(OmegaConf.load(seg / "config.yaml"), resolve=False)
    aug = config["augmentation"]
    dr = {k: aug[k] for k in sorted(aug) if k.endswith("_prob") and aug[k]}
    seg_log = segmenter_log(model)
    aug_name = seg_log.get("augmentation", "see config")
    refined = refinement_history(model)
    bench_line = (bench / "summary.md").read_text().splitlines()[0]  # "Made by `<command>` (load average ...)."
    summary = pd.read_csv(bench / "summary.csv")
    confusion = pd.read_csv(bench / "qc_confusion.csv")
    summary, confusion = summary[summary.candidate == candidate], confusion[confusion.candidate == candidate]
    lines = ["# Default two-step DN model (shipped with dentate_research)", "",
             "Synthetic-phantom training data only: a demonstration model, not a clinical one.", "",
             "## Training data", "", training_data(seg_card, config), "", "## Recipe", "",
             f"- localizer: {loc_card['arch']} {loc_card['arch_kwargs']}, {loc_card['target_spacing_mm']} mm, patch "
             f"{loc_card['patch_size']}; {stop_text(loc)}{localizer_origin(model)}",
             f"- segmenter: {seg_card['arch']} {seg_card['arch_kwargs']}, {seg_card['target_spacing_mm']} mm, patch "
             f"{seg_card['patch_size']}, classes {seg_card['classes']} (label scheme "
             f"`{config['stage']['label_scheme']}`; left/right decided per connected component from world geometry), "
             f"trained and validated on the crops of the localizer above (margin {seg_card['crop'].get('margin_mm')} "
             f"mm); {stop_text(seg)}",
             f"- augmentation: `{aug_name}` (probabilities {dr}; ranges in `segmentation/config.yaml`)",
             *refined,
             f"- segmenter validation mean Dice vs iterations and wall time{' (last phase)' if refined else ''}: "
             f"{learning_curve(seg, 'val_dice_mean')}",
             f"- localizer validation cerebellum Dice: {learning_curve(loc, 'val_dice_cerebellum')}",
             *inference_text(model, {"segmentation": seg_card, "localization": loc_card}),
             "", "## Benchmark", "",
             f"{bench_line} This model is `{candidate}` there; no stage saw any of these scans (see "
             "`benchmarks/bench_default_model.py` for the benches). Lost side: Dice < 0.5. Seconds per scan: read + "
             f"localize + crop + segment + post-process + QC, 2 threads. Packaged by `{command}`.", ""]
    return "\n".join(lines + tables_markdown(summary, confusion, with_candidate=False)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="two-step model folder (localization/ + "
                        "segmentation/ run folders)")
    parser.add_argument("--bench", type=Path, required=True, help="output folder of bench_default_model.py")
    parser.add_argument("--candidate", required=True, help="this model's candidate name in the benchmark")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    from dentate_research.data.atomic import write_csv_atomic, write_text_atomic
    from dentate_research.inference.default_model import install_model

    per_case = pd.read_csv(args.bench / "per_case.csv")
    per_case = per_case[per_case["candidate"] == args.candidate]
    if per_case.empty:
        parser.error(f"--candidate {args.candidate}: not in {args.bench / 'per_case.csv'}")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        parser.error(f"--out {args.out} exists; pass --overwrite to replace the packaged model")
    command = "python benchmarks/package_default_model.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:  # build beside the target, then swap in
        packaged = Path(tmp) / "packaged"
        install_model(args.model, packaged)
        write_text_atomic(packaged / "MODEL_CARD.md", card_text(args.model, args.bench, args.candidate, command))
        write_csv_atomic(per_case, packaged / "evaluation.csv")
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.move(str(packaged), str(args.out))
    print((args.out / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
