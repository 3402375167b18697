"""Statistics on known data: Shrout & Fleiss ICCs, independent ANOVA formulas, Pearson, Bland-Altman, tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dentate_research.evaluation.stats import (
    ICC_FORMS,
    agreement,
    bland_altman,
    icc,
    icc_two_columns,
    paired_comparison,
    paired_test,
    pearson,
    rank_biserial_paired,
    summarize,
)

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
                         dtype=float)


def _long(matrix: np.ndarray) -> pd.DataFrame:
    n, k = matrix.shape
    return pd.DataFrame([(f"t{i}", f"r{j}", matrix[i, j]) for i in range(n) for j in range(k)],
                        columns=["target", "rater", "rating"])


def _icc_anova(x: np.ndarray) -> tuple[float, float]:
    """Independent two-way ANOVA computation of ICC(2,1) and ICC(3,1) (Shrout & Fleiss formulas)."""
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    bms, jms, ems = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    icc2 = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    icc3 = (bms - ems) / (bms + (k - 1) * ems)
    return icc2, icc3


def test_icc_shrout_fleiss_textbook_values():
    res = icc(_long(SHROUT_FLEISS), "target", "rater", "rating").set_index("form")
    assert res.loc["ICC2", "icc"] == pytest.approx(0.29, abs=0.005)
    assert res.loc["ICC3", "icc"] == pytest.approx(0.71, abs=0.005)
    assert "absolute agreement" in res.loc["ICC2", "form_name"]
    assert "consistency" in res.loc["ICC3", "form_name"]
    assert res.loc["ICC2", "ci95_low"] < res.loc["ICC2", "icc"] < res.loc["ICC2", "ci95_high"]
    assert res.loc["ICC2", "n_targets"] == 6 and res.loc["ICC2", "n_raters"] == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_icc_matches_independent_anova_computation(seed):
    rng = np.random.default_rng(seed)
    truth = rng.normal(900, 150, 20)
    x = np.stack([truth + rng.normal(0, 60, 20), truth + 80 + rng.normal(0, 60, 20)], axis=1)
    icc2, icc3 = _icc_anova(x)
    res = icc_two_columns(x[:, 0], x[:, 1]).set_index("form")
    assert res.loc["ICC2", "icc"] == pytest.approx(icc2, abs=1e-9)
    assert res.loc["ICC3", "icc"] == pytest.approx(icc3, abs=1e-9)
    assert icc3 > icc2  # a systematic offset lowers absolute agreement, not consistency


def test_icc_rejects_unknown_form_and_too_few_targets():
    with pytest.raises(ValueError, match="unknown ICC form"):
        icc(_long(SHROUT_FLEISS), "target", "rater", "rating", forms=("ICC9",))
    with pytest.raises(ValueError, match="targets"):
        icc(_long(SHROUT_FLEISS[:2]), "target", "rater", "rating")


# pingouin's intraclass_corr result names by release (read from each release's pingouin/reliability.py)
_OLD_TYPES = ["ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k"]
_DESCRIPTIONS = ["Single raters absolute", "Single random raters", "Single fixed raters", "Average raters absolute",
                 "Average random raters", "Average fixed raters"]


def _as_pingouin(table: pd.DataFrame, release: str) -> pd.DataFrame:
    """pingouin 0.7's intraclass_corr table reshaped as an older release returns it (same numbers)."""
    if release in ("0.6.1", "0.7"):
        return table.copy()
    old = table.copy()
    old["Type"] = _OLD_TYPES  # 0.5.4 - 0.6.0: Shrout-Fleiss names and a Description column
    old.insert(1, "Description", _DESCRIPTIONS)
    return old.rename(columns={"CI95": "CI95%"}) if release in ("0.5.4", "0.5.5") else old


@pytest.mark.parametrize("release", ["0.5.4", "0.5.5", "0.6.0", "0.6.1", "0.7"])
def test_icc_shim_reads_every_allowed_pingouin_release(release, monkeypatch):
    """Every pingouin that pyproject allows (>= 0.5.4): its row and CI names reach the same ICC(2,1)/ICC(3,1)."""
    import pingouin as pg

    expected = icc(_long(SHROUT_FLEISS), "target", "rater", "rating", forms=tuple(ICC_FORMS))
    real = pg.intraclass_corr
    monkeypatch.setattr(pg, "intraclass_corr", lambda **kw: _as_pingouin(real(**kw), release))
    got = icc(_long(SHROUT_FLEISS), "target", "rater", "rating", forms=tuple(ICC_FORMS))
    pd.testing.assert_frame_equal(got, expected)
    assert got.set_index("form").loc["ICC2", "icc"] == pytest.approx(0.29, abs=0.005)


def test_icc_shim_refuses_a_result_it_does_not_know(monkeypatch):
    import pingouin as pg

    real = pg.intraclass_corr
    monkeypatch.setattr(pg, "intraclass_corr", lambda **kw: real(**kw).rename(columns={"CI95": "CI"}))
    with pytest.raises(ValueError, match=r"no CI column \['CI95', 'CI95%'\]"):
        icc(_long(SHROUT_FLEISS), "target", "rater", "rating")
    monkeypatch.setattr(pg, "intraclass_corr", lambda **kw: real(**kw).assign(Type=list("abcdef")))
    with pytest.raises(ValueError, match="unknown Type value"):
        icc(_long(SHROUT_FLEISS), "target", "rater", "rating")


def test_phantom_rater_icc_goes_through_the_shim(monkeypatch):
    """The phantom generator's rater ICC uses the shared ICC: pingouin 0.5.4's names give the same result."""
    from types import SimpleNamespace

    import pingouin as pg

    from dentate_research.data.phantom.generate import rater_volume_icc

    results = [SimpleNamespace(case=SimpleNamespace(case_id=f"c{i}"),
                               volumes_mm3={"rater1": {1: row[0], 2: row[1]}, "rater2": {1: row[2], 2: row[3]}})
               for i, row in enumerate(SHROUT_FLEISS * 100)]
    expected = rater_volume_icc(results, "rater1", "rater2")
    real = pg.intraclass_corr
    monkeypatch.setattr(pg, "intraclass_corr", lambda **kw: _as_pingouin(real(**kw), "0.5.4"))
    assert rater_volume_icc(results, "rater1", "rater2") == expected
    assert expected["n_targets"] == 12 and len(expected["ci95"]) == 2
    assert expected["ci95"][0] <= expected["icc"] <= expected["ci95"][1]
    assert rater_volume_icc(results[:1], "rater1", "rater2") is None

def test_pearson_with_fisher_ci():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(scale=0.8, size=40)
    res = pearson(x, y)
    r = np.corrcoef(x, y)[0, 1]
    assert res["r"] == pytest.approx(r)
    z, se = np.arctanh(r), 1 / np.sqrt(40 - 3)
    assert res["ci95_low"] == pytest.approx(np.tanh(z - 1.959964 * se), abs=1e-4)
    assert res["ci95_high"] == pytest.approx(np.tanh(z + 1.959964 * se), abs=1e-4)
    assert res["p"] == pytest.approx(sps.pearsonr(x, y).pvalue)
    y_nan = y.copy()
    y_nan[0] = np.nan
    assert pearson(x, y_nan)["n"] == 39


def test_bland_altman_known_values():
    b = np.array([100.0, 200.0, 300.0])
    a = b + np.array([1.0, 2.0, 3.0])
    res = bland_altman(a, b)
    assert res["bias"] == pytest.approx(2.0)
    assert res["sd"] == pytest.approx(1.0)
    assert res["loa_low"] == pytest.approx(2.0 - 1.96) and res["loa_high"] == pytest.approx(2.0 + 1.96)
    assert res["bias_percent"] == pytest.approx(1.0)


def test_paired_test_effect_sizes_and_cross_check_with_pingouin():
    import pingouin as pg

    rng = np.random.default_rng(5)
    a = rng.normal(0.85, 0.04, 25)
    b = a - rng.normal(0.2, 0.15, 25)
    res = paired_test(a, b)
    d = a - b
    assert res["cohen_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert res["p_ttest"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert res["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    w = pg.wilcoxon(a, b)
    assert res["rank_biserial"] == pytest.approx(float(w["RBC"].iloc[0]), abs=1e-3)
    assert rank_biserial_paired([2, 3, 4], [1, 1, 1]) == 1.0
    assert rank_biserial_paired([1, 1, 1], [2, 3, 4]) == -1.0


def _two_method_table() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for i in range(12):
        for side in ("left", "right"):
            good = 0.88 + rng.normal(0, 0.03)
            rows.append({"case": f"c{i}", "side": side, "reference": "rater1", "method": "nnunet", "dice": good,
                         "site": "A" if i < 6 else "B", "group": "healthy", "flag": ""})
            bad = np.nan if (i == 0 and side == "left") else 0.55 + rng.normal(0, 0.2)
            rows.append({"case": f"c{i}", "side": side, "reference": "rater1", "method": "classical", "dice": bad,
                         "site": "A" if i < 6 else "B", "group": "healthy",
                         "flag": "empty_prediction" if np.isnan(bad) else ""})
    return pd.DataFrame(rows)


def test_paired_comparison_per_side_drops_unpaired_cases():
    comp = paired_comparison(_two_method_table(), metric="dice").set_index("side")
    assert comp.loc["left", "n"] == 11 and comp.loc["right", "n"] == 12
    assert comp.loc["left", "method_a"] == "nnunet" and comp.loc["left", "method_b"] == "classical"
    assert comp.loc["left", "p_ttest"] < 0.01 and comp.loc["left", "cohen_dz"] > 0
    with pytest.raises(ValueError, match="at least 2 methods"):
        paired_comparison(_two_method_table().query("method == 'nnunet'"))


def test_summarize_excludes_nan_and_counts_flags():
    s = summarize(_two_method_table(), by=("method", "side"), metrics=("dice",)).set_index(["method", "side"])
    left = s.loc[("classical", "left")]
    assert left["n_rows"] == 12 and left["dice_n"] == 11 and left["n_empty_prediction"] == 1
    assert s.loc[("nnunet", "left"), "n_empty_prediction"] == 0
    assert np.isfinite(left["dice_mean"]) and left["dice_sd"] > 0


def test_agreement_table_has_named_forms():
    rng = np.random.default_rng(2)
    ref = rng.normal(900, 150, 15)
    df = pd.DataFrame({"method": "m", "reference": "r", "side": "left", "volume_ref_mm3": ref,
                       "volume_pred_mm3": ref * 0.9 + rng.normal(0, 40, 15)})
    row = agreement(df).iloc[0]
    assert -1 <= row["pearson_r"] <= 1 and row["pearson_n"] == 15
    assert row["ICC2"] < row["ICC3"]  # the 10 % underestimation costs absolute agreement
    assert row["ba_bias"] < 0
