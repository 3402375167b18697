"""Copy a two-step model folder with other inference settings (``inferer`` of a stage), weights unchanged.

Inference settings (test-time augmentation, windows per network call, overlap) are part of a trained stage's card
(``model.json``) and config (``config.yaml``); a candidate that differs from a trained model only in them is made
here and then scored like any other candidate (``choose_default_model.py`` on validation scans,
``bench_default_model.py``). The changes are recorded in ``OUT/inferer_changes.json``, which
``package_default_model.py`` writes into the model card.

    python benchmarks/with_inferer.py --model work_data/default_model_v3b --out work_data/default_model_v3b_tta \\
        --set segmentation.tta=lr_swap --set segmentation.sw_batch_size=2 --set localization.sw_batch_size=2
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHANGES_FILE = "inferer_changes.json"
STAGES = ("localization", "segmentation")


def parse_setting(text: str) -> tuple[str, str, object]:
    """``STAGE.KEY=VALUE`` -> (stage, key, value parsed as YAML), checked against the inferer's settings."""
    from dentate_research.runtime.inferer import InfererSettings

    target, sep, raw = text.partition("=")
    stage, _, key = target.partition(".")
    allowed = sorted(set(InfererSettings.__dataclass_fields__) - {"roi_size"})  # the window is the trained patch
    if not sep or stage not in STAGES or key not in allowed:
        raise ValueError(f"--set {text!r}: expected STAGE.KEY=VALUE with STAGE in {list(STAGES)} and KEY in {allowed}")
    return stage, key, yaml.safe_load(raw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="two-step model folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", dest="settings", action="append", required=True, metavar="STAGE.KEY=VALUE")
    parser.add_argument("--reason", default="", help="why (the measurement that chose it), for the model card")
    args = parser.parse_args()
    from dentate_research.data.atomic import write_text_atomic
    from dentate_research.runtime.inferer import InfererSettings

    try:
        settings = [parse_setting(s) for s in args.settings]
    except ValueError as exc:
        parser.error(str(exc))
    if args.out.exists():
        parser.error(f"--out {args.out} exists; choose another folder")
    for stage in STAGES:
        if not (args.model / stage / "model.json").exists():
            parser.error(f"--model {args.model}: {stage}/model.json not found (a two-step model folder is needed)")
    cards = {stage: json.loads((args.model / stage / "model.json").read_text()) for stage in STAGES}
    changes: dict[str, dict] = {}
    for stage, key, value in settings:
        changes.setdefault(stage, {})[key] = {"from": cards[stage]["inferer"].get(key), "to": value}
        cards[stage]["inferer"][key] = value
        try:  # refuse values the inferer cannot run before anything is written
            InfererSettings.from_dict(cards[stage]["inferer"], cards[stage]["patch_size"])
        except (TypeError, ValueError) as exc:
            parser.error(f"--set {stage}.{key}={value!r}: {exc}")
    shutil.copytree(args.model, args.out)
    for stage in changes:
        write_text_atomic(args.out / stage / "model.json", json.dumps(cards[stage], indent=1) + "\n")
        config_path = args.out / stage / "config.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["inferer"].update({key: change["to"] for key, change in changes[stage].items()})
        write_text_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
    command = " ".join(["python benchmarks/with_inferer.py --model", shlex.quote(str(args.model)), "--out",
                        shlex.quote(str(args.out)), *(f"--set {shlex.quote(s)}" for s in args.settings)])
    record = {"source": str(args.model), "changes": changes, "reason": args.reason, "command": command}
    previous = args.model / CHANGES_FILE  # a chain of such copies keeps the earlier changes
    if previous.exists():
        record["earlier"] = json.loads(previous.read_text())
    write_text_atomic(args.out / CHANGES_FILE, json.dumps(record, indent=1) + "\n")
    print(json.dumps(changes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
