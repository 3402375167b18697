"""The paper's reference numbers (Shiraishi et al., Radiology: AI 2025), quoted next to the reproduced tables.

Keys: ``intrarater_icc`` / ``interrater_icc`` (T2, DN volume, mean of sides); ``two_step_dice_<side>`` (internal
test set); ``external_dice_<side>`` (T5, two-step vs the classical tool); ``unseen_pearson_volume_<side>`` (T6,
automated vs manual DN volume on unseen datasets).
"""

from __future__ import annotations

PAPER: dict[str, float | str] = {
    "intrarater_icc": 0.91, "interrater_icc": 0.78,
    "two_step_dice_left": "0.90 +/- 0.03", "two_step_dice_right": "0.89 +/- 0.04",
    "external_dice_left": "0.86 +/- 0.04 vs 0.57 +/- 0.22 (P < .001)",
    "external_dice_right": "0.84 +/- 0.07 vs 0.58 +/- 0.24 (P < .001)",
    "unseen_pearson_volume_left": 0.74, "unseen_pearson_volume_right": 0.48,
}
