"""`analysis.stats.verdicts` on synthetic paired differences whose answer is known: the
signed-rank rule (docs/studies.md#verdicts), each expectation computed here independently
(scipy's tests, Walsh averages and Holm by hand), its measured error rates on synthetic studies
(`analysis.verdict_rates`), the paired t-test kept beside it, stalls, and the margin the reports
use and state. No training: fast."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from scipy import stats

from analysis.report import main as report_main
from analysis.runs import read_runs_csv
from analysis.stats import (
    MARGINS, STALL_ERROR, default_margin, hodges_lehmann, holm, seeds_needed, variant_table, verdict_summary, verdicts,
)  # fmt: skip
from analysis.verdict_rates import SCENARIOS, rates
from lenet5.config import PROJECT_DIR, Dataset

MARGIN = 0.1  # points of test error, MNIST's default
CLEAR = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 0.85]  # +1 point on all seven seeds: p = 2 / 2^7 alone
TIGHT_ZERO = [0.01, -0.02, 0.0, 0.02, -0.01, 0.03, -0.03, 0.01, -0.01, 0.02]  # no effect, far inside ±0.1
#: Zero-centred noise, far from decided: the companions that enlarge a family.
COMPANION = [0.5, -0.5, 0.3, -0.3, 0.1, -0.1]
PUBLISHED = PROJECT_DIR / "results" / "ablation"


def _signed_rank(d, **kwargs):
    return stats.wilcoxon(np.round(d, 6), method="exact", **kwargs).pvalue


def _tost_p(d, margin):
    """The signed-rank TOST by hand: the larger p of the one-sided tests of d - margin below 0 and d + margin above 0."""
    d = np.asarray(d)
    return max(_signed_rank(d - margin, alternative="less"), _signed_rank(d + margin, alternative="greater"))


def test_a_clear_effect_is_worse_or_better_by_its_sign_with_the_signed_rank_test():
    table = verdicts({"worse": CLEAR, "better": [-d for d in CLEAR]}, MARGIN)
    assert table["verdict"].tolist() == ["worse", "better"]
    assert table["seeds_needed"].isna().all()  # decided: nothing to plan
    p = _signed_rank(CLEAR)
    assert p == pytest.approx(2 / 2**7)  # all seven one way: the exact test's smallest p
    assert table["p"].tolist() == pytest.approx([p, p]) and table["p_holm"].tolist() == pytest.approx([2 * p, 2 * p])
    walsh = [(a + b) / 2 for i, a in enumerate(CLEAR) for b in CLEAR[i:]]
    assert table.loc["worse", "diff"] == pytest.approx(np.median(walsh))  # Hodges-Lehmann
    assert table.loc["worse", ["mean_diff", "sd"]].tolist() == pytest.approx([np.mean(CLEAR), np.std(CLEAR, ddof=1)])


def test_the_hodges_lehmann_interval_is_the_signed_rank_tests_acceptance_region():
    rng = np.random.default_rng(3)
    d = np.round(rng.normal(0.2, 0.1, 12), 2)
    estimate, low, high = hodges_lehmann(d)
    assert low < estimate < high
    for end, outward in ((low, -1e-4), (high, 1e-4)):
        assert _signed_rank(d - (end - outward)) >= 0.05  # just inside: not rejected
        assert _signed_rank(d - (end + outward)) < 0.05  # just outside: rejected
    # Too few seeds to reject any shift at 5 % (the smallest two-sided p of 3 is 0.25): unbounded.
    assert hodges_lehmann([0.1, 0.2, 0.3])[1:] == (-math.inf, math.inf)


def test_worse_on_every_seed_is_decided_whatever_the_size_of_a_stalled_run():
    """The issue's case: nine seeds a little worse, one stalled. The t-test's verdict depends on
    how far the stall went; the signed-rank rule's does not."""
    ordinary = [0.4, 0.45, 0.5, 0.35, 0.42, 0.48, 0.38, 0.44, 0.41]
    for stall in (0.8, 13.0, 89.0):
        table = verdicts({"v": [*ordinary, stall], **{f"c{i}": COMPANION for i in range(8)}}, MARGIN)
        assert table.loc["v", "verdict"] == "worse", stall
        assert table.loc["v", "p"] == pytest.approx(2 / 2**10)
    assert table.loc["v", "verdict_t"] == "undecided"  # the t-test, at a stall of 89 points


def test_one_lucky_seed_does_not_make_a_variant_better():
    noise = [0.05, -0.04, 0.03, -0.06, 0.02, -0.01, 0.04, -0.03, 0.01]
    table = verdicts({"lucky": [*noise, -80.0]}, MARGIN)
    assert table.loc["lucky", "verdict"] != "better"
    assert table.loc["lucky", "diff"] == pytest.approx(hodges_lehmann([*noise, -80.0])[0]) and abs(table.loc["lucky", "diff"]) < 0.05


def test_no_effect_with_a_tight_spread_is_equivalent_and_not_without_room_under_the_margin():
    table = verdicts({"same": TIGHT_ZERO}, MARGIN)
    assert table.loc["same", "verdict"] == "equivalent" and math.isnan(table.loc["same", "seeds_needed"])
    assert table.loc["same", "p_tost"] == pytest.approx(_tost_p(TIGHT_ZERO, MARGIN))
    assert table.loc["same", "p_tost"] < 0.01 and table.loc["same", "p"] > 0.5
    # The same differences against a margin they do not fit under: not equivalent.
    assert verdicts({"same": TIGHT_ZERO}, 0.015).loc["same", "verdict"] == "undecided"


def test_the_paired_t_tests_verdict_stays_beside_the_new_one():
    rng = np.random.default_rng(0)
    baseline = rng.normal(1.0, 0.1, 6)
    variant = baseline + rng.normal(0.05, 0.03, 6)
    table = verdicts({"v": variant - baseline, "w": np.array(CLEAR)}, MARGIN)
    p_t = [stats.ttest_rel(variant, baseline).pvalue, stats.ttest_1samp(CLEAR, 0).pvalue]
    assert table["p_t_holm"].tolist() == pytest.approx(list(holm(p_t)))
    assert table.loc["w", "verdict_t"] == "worse"
    assert verdict_summary(table, MARGIN).endswith("Paired t-test: " + ", ".join(
        f"{n} {v}" for v, n in table["verdict_t"].value_counts().sort_index(key=lambda i: i.map(
            {"worse": 0, "better": 1, "equivalent": 2, "undecided": 3})).items()) + ".")  # fmt: skip


def test_holm_adjusts_the_signed_rank_tests_and_the_tosts_over_the_family_separately():
    shown_alone = [0.1, 0.25, 0.05, 0.2, 0.15, 0.3, 0.12]
    p = _signed_rank(shown_alone)
    assert p == pytest.approx(2 / 2**7)
    assert verdicts({"x": shown_alone}, MARGIN).loc["x", "verdict"] == "worse"
    family = verdicts({"x": shown_alone, **{f"c{i}": COMPANION for i in range(9)}}, MARGIN)
    assert family.loc["x", "p"] == pytest.approx(p) and family.loc["x", "p_holm"] == pytest.approx(10 * p)
    assert family.loc["x", "verdict"] == "undecided"
    p_tost = _tost_p(TIGHT_ZERO[:7], MARGIN)
    family = verdicts({"e": TIGHT_ZERO[:7], **{f"c{i}": [d + 0.01 * i for d in CLEAR] for i in range(9)}}, MARGIN)
    assert family.loc["e", "p_tost_holm"] == pytest.approx(min(1.0, 10 * p_tost))  # its own family of ten TOSTs


def test_the_plan_knows_the_rank_tests_floor_and_gives_up_where_nothing_decides():
    # Three pilot seeds far apart from 0: any seed more would point the same way, but an exact
    # rank test of n seeds cannot go below p = 2^(1-n): at 0.05/9 that takes 9 seeds, alone 6.
    assert seeds_needed([0.5, 0.6, 0.55], MARGIN, family=9) == 9
    assert seeds_needed([0.5, 0.6, 0.55], MARGIN, family=1) == 6
    assert 2 / 2**9 < 0.05 / 9 < 2 / 2**8
    # A difference at the margin with a huge spread: no n up to the cap decides it.
    assert math.isinf(seeds_needed([MARGIN + 4 * d for d in (-1, 1, -0.5, 0.5, 0)], MARGIN))
    assert math.isnan(seeds_needed([0.3], MARGIN))
    # A pure function of the differences: a report rebuilds byte for byte.
    pilot = [0.02, 0.11, -0.04]
    assert seeds_needed(pilot, MARGIN, family=3) == seeds_needed(pilot, MARGIN, family=3)
    table = verdicts({"at the margin": [MARGIN + 4 * d for d in (-1, 1, -0.5, 0.5, 0)], "one seed": [0.3]}, MARGIN)
    summary = verdict_summary(table, MARGIN)
    assert summary.startswith("Verdicts at margin ±0.1 pp") and "2 undecided" in summary
    assert "no number of seeds up to 200 decides 1" in summary and "1 with under 2 paired seeds" in summary


def test_the_planned_seeds_decide_as_often_as_planned():
    """Seeds planned from a comparison's differences: studies of that many seeds drawn from the same
    distribution decide it (at the family's Bonferroni level) about 80 % of the time."""
    shift, spread = 0.08, 0.06
    observed = stats.norm.ppf((np.arange(6) + 0.5) / 6, shift, spread)  # a pilot shaped like its distribution
    n = int(seeds_needed(observed, MARGIN, family=9))
    fresh = np.random.default_rng(7).normal(shift, spread, (400, n))
    p = stats.wilcoxon(fresh, axis=-1, method="exact" if n <= 50 else "asymptotic").pvalue
    assert 0.7 < np.mean(p < 0.05 / 9) < 0.95, n


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


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.name.startswith("no effect")], ids=lambda s: s.name)
def test_the_rules_false_positive_rate_stays_at_the_nominal_level(scenario):
    measured = rates(scenario, studies=300, seed=1)["signed-rank"]
    assert measured["family-wise false difference"] <= 5.0, measured
    if scenario.lucky_seed:
        assert measured["better"] <= 5.0


def test_the_rule_keeps_its_power_where_stalls_take_the_t_tests():
    by_name = {s.name: s for s in SCENARIOS}
    stalled = rates(by_name["shift +0.1 pp, 16 seeds, 10 % of its seeds stall"], studies=300, seed=1)
    assert stalled["signed-rank"]["worse"] >= 90.0 and stalled["t-test"]["worse"] < 50.0
    every_seed = rates(by_name["worse by 0.4 pp on all 16 seeds, 2 stalled"], studies=100, seed=1)
    assert every_seed["signed-rank"]["worse"] == 100.0 and every_seed["t-test"]["worse"] == 0.0
    at_margin = rates(by_name["shift at the margin (+0.1 pp), 16 seeds"], studies=300, seed=1)["signed-rank"]
    assert at_margin["equivalent"] <= 5.0


def test_stalls_are_counted_and_compared_with_the_baselines_by_fishers_test():
    fashion = read_runs_csv(PUBLISHED / "fashion-ofat" / "runs.csv")
    table = variant_table(fashion).set_index("variant")
    relu = table.loc["paper act=relu dataset=fashion_mnist"]
    errors = fashion[fashion["variant"] == relu.name]["test_error"]
    assert relu["stalls"] == (errors >= STALL_ERROR).sum() == 2 and relu["n"] == 12
    assert relu["stall_p"] == pytest.approx(stats.fisher_exact([[2, 10], [0, 12]]).pvalue)
    assert relu["verdict"] == "worse" and relu["verdict_t"] == "undecided"
    assert table["stalls"].drop(relu.name).eq(0).all()


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

    for trial in range(4):
        family = {f"v{i}": rng.normal(rng.normal(0, 0.15), rng.uniform(0.02, 0.3), size=3) for i in range(9)}
        whole = planned(verdicts(family, MARGIN))
        kept = [label for label in family if rng.random() < 0.6] or ["v0"]
        part = planned(verdicts({label: family[label] for label in kept}, MARGIN))
        assert (part <= whole[kept]).all(), (trial, part.to_dict(), whole[kept].to_dict())
