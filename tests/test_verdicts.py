"""`analysis.stats.verdicts` on synthetic paired differences whose answer is known, each
expectation computed here independently (scipy's t-tests, statsmodels' power solution, Holm by
hand), and the margin the reports use and state. No training: fast."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from analysis.report import main as report_main
from analysis.runs import read_runs_csv
from analysis.stats import MARGINS, default_margin, holm, seeds_needed, verdict_summary, verdicts
from lenet5.config import PROJECT_DIR, Dataset

MARGIN = 0.1  # points of test error, MNIST's default
CLEAR = [1.0, 1.1, 0.9, 1.05, 0.95]  # +1 point, spread 0.08: shown at any sane level
TIGHT_ZERO = [0.01, -0.02, 0.0, 0.02, -0.01]  # no effect, spread 0.016, far inside ±0.1
#: Zero-mean noise, far from decided: the companions that enlarge a family.
COMPANION = [0.5, -0.5, 0.3, -0.3, 0.0]
PUBLISHED = PROJECT_DIR / "results" / "ablation"


def _tost_p(d, margin):
    """TOST by hand: the larger p of the two one-sided t-tests against -margin and +margin."""
    return max(
        stats.ttest_1samp(d, -margin, alternative="greater").pvalue, stats.ttest_1samp(d, margin, alternative="less").pvalue
    )


def _n(effect, alpha, alternative):
    return math.ceil(TTestPower().solve_power(effect_size=effect, nobs=None, alpha=alpha, power=0.8, alternative=alternative))


def test_a_clear_effect_is_worse_or_better_by_its_sign():
    table = verdicts({"worse": CLEAR, "better": [-d for d in CLEAR]}, MARGIN)
    assert table["verdict"].tolist() == ["worse", "better"]
    assert table["seeds_needed"].isna().all()  # decided: nothing to plan
    p = stats.ttest_1samp(CLEAR, 0).pvalue
    assert table["p"].tolist() == pytest.approx([p, p])
    assert table["p_holm"].tolist() == pytest.approx([2 * p, 2 * p])  # m = 2, equal p-values
    assert table.loc["worse", ["n", "diff", "sd"]].tolist() == pytest.approx([5, np.mean(CLEAR), np.std(CLEAR, ddof=1)])


def test_the_paired_t_test_is_the_paired_one():
    rng = np.random.default_rng(0)
    baseline = rng.normal(1.0, 0.1, 6)
    variant = baseline + rng.normal(0.05, 0.03, 6)
    table = verdicts({"v": variant - baseline}, MARGIN)
    assert table.loc["v", "p"] == pytest.approx(stats.ttest_rel(variant, baseline).pvalue)
    assert table.loc["v", "p_tost"] == pytest.approx(_tost_p(variant - baseline, MARGIN))


def test_no_effect_with_a_tight_spread_is_equivalent_and_not_without_room_under_the_margin():
    table = verdicts({"same": TIGHT_ZERO}, MARGIN)
    assert table.loc["same", "verdict"] == "equivalent" and math.isnan(table.loc["same", "seeds_needed"])
    assert table.loc["same", "p_tost"] == pytest.approx(_tost_p(TIGHT_ZERO, MARGIN))
    assert table.loc["same", "p_tost"] < 0.001 and table.loc["same", "p"] > 0.5
    # The same differences against a margin they do not fit under: not equivalent.
    assert verdicts({"same": TIGHT_ZERO}, 0.005).loc["same", "verdict"] == "undecided"


def test_a_noisy_comparison_is_undecided_with_the_seeds_statsmodels_power_solution_gives():
    # `far` sits beyond the margin (mean 0.15): only showing the difference can decide it.
    # `near` is close to 0 (mean 0.004, sd 0.12): showing equivalence within ±0.1 is cheaper.
    far, near = [0.05, 0.35, 0.0, 0.25, 0.1], [0.1, -0.15, 0.05, -0.1, 0.12]
    table = verdicts({"far": far, "near": near}, MARGIN)
    assert table["verdict"].tolist() == ["undecided", "undecided"]
    level = 0.05 / 2  # Bonferroni over the family of two
    sd_far, sd_near = np.std(far, ddof=1), np.std(near, ddof=1)
    expected_far = _n(np.mean(far) / sd_far, level, "two-sided")
    expected_near = _n((MARGIN - abs(np.mean(near))) / sd_near, level, "larger")
    assert table["seeds_needed"].tolist() == [expected_far, expected_near]
    # The plans are not the unadjusted ones, and `near`'s difference plan would need far more.
    assert _n(np.mean(far) / sd_far, 0.05, "two-sided") < expected_far
    assert TTestPower().power(effect_size=abs(np.mean(near)) / sd_near, nobs=expected_near, alpha=level) < 0.8
    assert seeds_needed(np.mean(far), sd_far, MARGIN, 5, family=2) == expected_far


def test_seeds_needed_is_at_least_one_more_and_infinite_when_nothing_could_decide():
    assert seeds_needed(diff=1.0, sd=0.2, margin=MARGIN, n=3) == 4  # any extra seed would do
    # A difference at the margin with a huge spread: neither plan reaches power 0.8 within the cap.
    assert math.isinf(seeds_needed(diff=MARGIN, sd=4.0, margin=MARGIN, n=5))
    assert math.isnan(seeds_needed(diff=0.3, sd=math.nan, margin=MARGIN, n=1))
    table = verdicts({"at the margin": [MARGIN + 4 * d for d in (-1, 1, -0.5, 0.5, 0)], "one seed": [0.3]}, MARGIN)
    assert table["verdict"].tolist() == ["undecided", "undecided"]
    assert math.isinf(table.loc["at the margin", "seeds_needed"]) and math.isnan(table.loc["one seed", "p"])
    summary = verdict_summary(table, MARGIN)
    assert summary.startswith("Verdicts at margin ±0.1 pp") and "2 undecided" in summary
    assert "no number of seeds decides 1" in summary and "1 with under 2 paired seeds" in summary


def test_holm_adjusts_the_t_tests_over_the_family():
    shown_alone = [0.1, 0.25, 0.05, 0.2, 0.15]
    p = stats.ttest_1samp(shown_alone, 0).pvalue
    assert 0.005 < p < 0.05  # passes alone, not when ten share alpha
    assert verdicts({"x": shown_alone}, MARGIN).loc["x", "verdict"] == "worse"
    family = verdicts({"x": shown_alone, **{f"c{i}": COMPANION for i in range(9)}}, MARGIN)
    assert family.loc["x", "p"] == pytest.approx(p)  # the raw p is its own
    assert family.loc["x", "p_holm"] == pytest.approx(10 * p)  # the smallest of ten: times 10
    assert family.loc["x", "verdict"] == "undecided" and family.loc["x", "seeds_needed"] > 5


def test_holm_leaves_the_garbage_collector_as_it_found_it():
    """`holm` freezes the existing objects around statsmodels' full `gc.collect()`: it must
    unfreeze them after, and leave a freeze someone else holds in place."""
    p = [0.01, 0.04, 0.03]
    expected = [0.03, 0.06, 0.06]  # Holm by hand, sorted 0.01, 0.03, 0.04: 3 x, 2 x, max(1 x, the one before)
    assert gc.get_freeze_count() == 0
    assert holm(p) == pytest.approx(expected)
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert holm(p) == pytest.approx(expected)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_holm_adjusts_the_tosts_over_the_family_separately():
    equivalent_alone = [0.03, -0.06, 0.08, -0.02, 0.0]
    p_tost = _tost_p(equivalent_alone, MARGIN)
    assert 0.005 < p_tost < 0.05
    assert verdicts({"e": equivalent_alone}, MARGIN).loc["e", "verdict"] == "equivalent"
    family = verdicts({"e": equivalent_alone, **{f"c{i}": COMPANION for i in range(9)}}, MARGIN)
    assert family.loc["e", "p_tost_holm"] == pytest.approx(10 * p_tost)
    assert family.loc["e", "verdict"] == "undecided"
    # Companions with clear effects: nine tiny t-test p-values. Pooled with the TOSTs into one
    # family of 20 they would rank first and leave `e`'s TOST p times 11; its own family of ten
    # TOSTs makes it times 10.
    clear = verdicts({"e": equivalent_alone, **{f"c{i}": [d + 0.01 * i for d in CLEAR] for i in range(9)}}, MARGIN)
    assert (clear["verdict"] == "worse").sum() == 9 and (clear["p"].drop("e") < p_tost).all()
    assert clear.loc["e", "p_tost_holm"] == pytest.approx(10 * p_tost)


def test_every_dataset_has_a_margin_and_a_report_states_the_one_it_used(tmp_path, capsys):
    assert set(MARGINS) == {d.value for d in Dataset} and MARGINS["mnist"] == 0.1
    fashion = read_runs_csv(PUBLISHED / "fashion-ofat" / "runs.csv")
    assert default_margin(fashion) == MARGINS["fashion_mnist"]
    assert report_main(["--runs-csv", str(PUBLISHED / "mnist-ofat" / "runs.csv"), "--out", str(tmp_path), "--margin", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "Verdicts at margin ±0.2 pp, Holm-adjusted α = 0.05: " in printed
    assert "Verdicts at margin ±0.2 pp" in (tmp_path / "factors.md").read_text(encoding="utf-8")
    assert "$\\pm$0.2 pp" in (tmp_path / "variants.tex").read_text(encoding="utf-8")
    with pytest.raises(SystemExit):
        report_main(["--runs-csv", "x.csv", "--margin", "-1"])


def test_a_subfamily_never_plans_more_seeds_than_the_whole_family():
    """A study launch that sees only some pilots finished plans those over a smaller family
    (lenet5.study plan_seeds): that is only safe if no member then needs more seeds than the
    whole family would give it, so that its seeds are a prefix of the final plan's."""
    rng = np.random.default_rng(0)

    def planned(table):  # a decided comparison needs no more seeds (the study gives it min_seeds)
        return table["seeds_needed"].fillna(0)

    for trial in range(40):
        family = {f"v{i}": rng.normal(rng.normal(0, 0.15), rng.uniform(0.02, 0.3), size=3) for i in range(9)}
        whole = planned(verdicts(family, MARGIN))
        kept = [label for label in family if rng.random() < 0.6] or ["v0"]
        part = planned(verdicts({label: family[label] for label in kept}, MARGIN))
        assert (part <= whole[kept]).all(), (trial, part.to_dict(), whole[kept].to_dict())
