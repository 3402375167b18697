"""Choose the shipped default model among candidate two-step models on VALIDATION scans only (never the test sets).

Each candidate (``NAME=MODEL_DIR``, a two-step model folder or ``default``) is applied through ``DentatePredictor``
(``bench_default_model.score``, the benchmark's scorer) to the fold-0 validation scans of every given data set
(``MANIFEST,SPLITS``; e.g. the easy ``cpu`` and the ``hard`` phantoms of the CPU study: the same subjects,
different phantom effects), scored against ``--reference`` (the rater the models were trained on). The table reports
mean Dice per side and data set, the failure count (Dice < 0.5) and the mean of all; the candidate with the highest
mean is the choice. Validation scans of one candidate's own fold are training scans of no candidate here (both
studies use the same split seed and subjects).

    E=work_data/reproduce/cpu_easy_preset; H=work_data/reproduce/cpu
    python benchmarks/choose_default_model.py \\
        --candidate shipped=default --candidate robust=work_data/default_model_robust \\
        --data cpu=$E/data_cpu_seed0/manifest.tsv,SPLITS --data hard=$H/data_hard_seed0/manifest.tsv,SPLITS

``--data NAME=MANIFEST`` (no split file) takes every scan of the manifest as a validation scan: for scans of new
subjects of the development sites that no candidate trained on (e.g. ``make-data --seed 3 --sites siteA ...
siteG``, filtered to the scans whose nucleus the field of view cuts, which fold 0's validation subjects lack).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", action="append", required=True, help="NAME=MODEL_DIR (or NAME=default)")
    parser.add_argument("--data", action="append", required=True,
                        help="NAME=MANIFEST,SPLITS (the fold's validation scans) or NAME=MANIFEST (every scan)")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--reference", default="rater1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="CSV of the per-case rows")
    args = parser.parse_args()

    from bench_default_model import phantom_scans, score

    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.splits import load_split

    rows = []
    for data_arg in args.data:
        data_name, paths = data_arg.split("=", 1)
        manifest, _, splits = paths.partition(",")
        if splits:
            case_ids = list(load_split(Path(splits), args.fold).val)
        else:
            case_ids = [case.case_id for case in read_manifest(Path(manifest))]
        scans = phantom_scans(data_name, Path(manifest), case_ids)
        for cand_arg in args.candidate:
            name, model = cand_arg.split("=", 1)
            df = score(name, model, scans, args.threads)
            df = df[df["reference"] == args.reference].rename(columns={"bench": "data"})
            rows.append(df)
            print(f"[choose] {name} on {data_name}: {len(scans)} validation scans, Dice "
                  f"{df.groupby('side')['dice'].mean().round(3).to_dict()}", flush=True)
    per_case = pd.concat(rows, ignore_index=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        per_case.to_csv(args.out, index=False)
    table = per_case.pivot_table(index="candidate", columns=["data", "side"], values="dice", aggfunc="mean")
    table.columns = [f"{data} {side}" for data, side in table.columns]  # flat: the summary columns join them
    table["failures (Dice < 0.5)"] = per_case.assign(f=per_case["dice"].fillna(0) < 0.5).groupby("candidate")["f"].sum()
    table["mean of all"] = per_case.groupby("candidate")["dice"].mean()
    print(f"fold {args.fold} validation scans, reference {args.reference}, load average {os.getloadavg()[0]:.2f}")
    print(table.round(3).to_markdown())
    print(f"choice: {table['mean of all'].idxmax()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
