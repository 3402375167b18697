"""T2: rater reliability, intra- and interrater ICC of the DN volume (ICC(2,1) primary, ICC(3,1)) and Dice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .paper import PAPER
from .registry import Study, register
from .tables import write_table

if TYPE_CHECKING:
    from pathlib import Path

    from .runner import StudyRunner


def reliability_study(runner: StudyRunner) -> Path:
    """Write ``T2_rater_reliability.{md,csv}`` and the per-pair table; returns the Markdown path."""
    from ..evaluation.reliability import rater_reliability

    summary, per_case = rater_reliability(runner.cases, progress=True)
    runner.save_per_case(per_case, "T2_rater_pairs")
    keep = ["study", "rater_a", "rater_b", "side", "form", "form_name", "icc", "ci95_low", "ci95_high",
            "dice_mean", "dice_sd", "n_cases"]
    table = summary[[c for c in keep if c in summary.columns]]
    means = table[(table["side"] == "mean_of_sides") & (table["form"] == "ICC2")]
    got = {r["study"]: r["icc"] for _, r in means.iterrows()}
    notes = (f"Paper (DN volume, average of sides): intrarater ICC {PAPER['intrarater_icc']}, interrater ICC "
             f"{PAPER['interrater_icc']}. Here ICC(2,1) mean of sides: intrarater "
             f"{got.get('intrarater', float('nan')):.2f}, interrater {got.get('interrater', float('nan')):.2f}.")
    return write_table(table, runner.s.out_dir, "T2_rater_reliability",
                       "T2 Rater reliability of DN volume (named ICC forms) and Dice between raters",
                       runner.stamp(), notes)


STUDY = register(Study(
    name="reliability", table_id="T2", table=reliability_study,
    title="Rater reliability: intra- and interrater ICC of the DN volume, Dice between raters"))
