"""How often each verdict rule decides what, on synthetic studies whose answer is known.

    python -m analysis.verdict_rates [--studies 2000] [--out results/verdict_rates]

writes verdict_rates.{md,csv}: for each scenario (`SCENARIOS`), the rate at which the signed-rank
rule (`analysis.stats.RULE`, the one every verdict uses) and the paired t-test (the rule the first
published studies declared) call the comparison under test worse, better or equivalent, and the
family-wise rate of false differences. docs/studies.md#verdicts quotes the table; the tests
assert the same properties on fewer studies (tests/test_verdicts.py).

A synthetic study has `n` seeds and a family of `family` comparisons against one baseline, as a
study has: the baseline's test error on each seed is 1 % plus noise (sd 0.05 points), each
variant's is the baseline's plus its shift plus noise (sd `sd`), both rounded to 0.01 points like
errors over 10,000 test images. A stalled run's error is 90 % (chance); a stalled baseline seed
stalls in every comparison of its study, as it would. Comparison 0 is the one under test; the
others have no effect (where every arm stalls at the same rate, stalls are no effect either).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .stats import ALPHA, BETTER, CHANCE_ERROR, EQUIVALENT, WORSE, holm, signed_rank_p_values, t_p_values, walsh_median

MARGIN = 0.1  # MNIST's δ, points
BASELINE_ERROR, BASELINE_SD = 1.0, 0.05
RULES = ("signed-rank", "t-test")


@dataclass(frozen=True)
class Scenario:
    """One kind of synthetic study (see the module's docstring); rates are in % of studies."""

    name: str
    n: int  # seeds
    shift: float = 0.0  # comparison 0's true effect, points
    sd: float = 0.06  # spread of a variant's own noise, points (mnist-ofat's pooled paired sd is 0.062)
    family: int = 9  # comparisons, as in an ofat study
    stall_both: float = 0.0  # chance that a seed stalls, in every arm (baseline and all variants): no effect
    stall_variant: float = 0.0  # chance that comparison 0's variant stalls on a seed (a cost of its own)
    stalled_seeds: int = 0  # comparison 0's variant stalls on exactly this many of its seeds
    lucky_seed: float = 0.0  # comparison 0's first seed this many points better than its baseline
    positive: bool = False  # comparison 0 worse on every seed: its noise folded to |noise|
    expect: str = ""  # what a correct rule says of comparison 0


SCENARIOS = [
    Scenario("no effect", 10, expect="not worse or better (false positives ≤ 5 % family-wise)"),
    Scenario("no effect, 10 % of seeds stall in both arms", 10, stall_both=0.1,
             expect="not worse or better (false positives ≤ 5 % family-wise)"),
    Scenario("shift +0.1 pp", 10, shift=0.1, expect="worse"),
    Scenario("shift +0.1 pp, 10 % of its seeds stall", 10, shift=0.1, stall_variant=0.1, expect="worse"),
    Scenario("shift +0.1 pp, 16 seeds", 16, shift=0.1, expect="worse"),
    Scenario("shift +0.1 pp, 16 seeds, 10 % of its seeds stall", 16, shift=0.1, stall_variant=0.1, expect="worse"),
    Scenario("worse by 0.4 pp on all 16 seeds, 2 stalled", 16, shift=0.4, stalled_seeds=2, positive=True, expect="worse"),
    Scenario("no effect but one seed 5 pp better", 10, lucky_seed=5.0, expect="not better"),
    Scenario("no effect, 16 seeds", 16, expect="equivalent"),
    Scenario("shift at the margin (+0.1 pp), 16 seeds", 16, shift=MARGIN, expect="not equivalent (≤ 5 %)"),
]  # fmt: skip


def synthetic_differences(scenario: Scenario, studies: int, rng: np.random.Generator) -> np.ndarray:
    """(studies, family, n) paired differences variant - baseline, points of test error."""
    s, shape = scenario, (studies, scenario.family, scenario.n)
    baseline = np.round(BASELINE_ERROR + rng.normal(0.0, BASELINE_SD, (studies, 1, s.n)), 2)
    noise = rng.normal(0.0, s.sd, shape)
    if s.positive:
        noise[:, 0] = np.abs(noise[:, 0])
    shift = np.zeros((1, s.family, 1))
    shift[0, 0, 0] = s.shift
    variant = np.round(baseline + shift + noise, 2)
    variant = np.where(rng.random(shape) < s.stall_both, CHANCE_ERROR, variant)
    variant[:, 0] = np.where(rng.random((studies, s.n)) < s.stall_variant, CHANCE_ERROR, variant[:, 0])
    variant[:, 0, : s.stalled_seeds] = CHANCE_ERROR
    baseline = np.where(rng.random(baseline.shape) < s.stall_both, CHANCE_ERROR, baseline)
    differences = variant - baseline
    differences[:, 0, 0] -= s.lucky_seed
    return differences


def _centres(differences: np.ndarray, rule: str) -> np.ndarray:
    """Each comparison's estimate along the last axis: Hodges-Lehmann (signed-rank) or mean (t)."""
    return differences.mean(axis=-1) if rule == "t-test" else walsh_median(differences)


def decide(differences: np.ndarray, rule: str, margin: float = MARGIN, alpha: float = ALPHA) -> np.ndarray:
    """Verdicts ("worse", "better", "equivalent", "undecided") of (studies, family, n)
    differences, each study's family Holm-adjusted as `analysis.stats.verdicts` does."""
    p, p_tost = (signed_rank_p_values if rule == "signed-rank" else t_p_values)(differences, margin)
    p_holm = np.array([holm(row) for row in p])
    p_tost_holm = np.array([holm(row) for row in p_tost])
    centre = _centres(differences, rule)
    shown = p_holm < alpha
    return np.where(shown & (centre > 0), WORSE, np.where(shown, BETTER, np.where(p_tost_holm < alpha, EQUIVALENT, "undecided")))


def rates(scenario: Scenario, studies: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """{rule: {worse, better, equivalent (comparison 0's rates, %), family-wise false difference
    (% of studies where a comparison with no effect was called worse or better)}}."""
    differences = synthetic_differences(scenario, studies, np.random.default_rng(seed))
    found = {}
    for rule in RULES:
        verdict = decide(differences, rule)
        first = verdict[:, 0]
        null_members = verdict if scenario.shift == 0 and not scenario.positive else verdict[:, 1:]
        false = np.isin(null_members, (WORSE, BETTER)).any(axis=1)
        found[rule] = {
            "worse": 100 * np.mean(first == WORSE), "better": 100 * np.mean(first == BETTER),
            "equivalent": 100 * np.mean(first == EQUIVALENT), "family-wise false difference": 100 * np.mean(false),
        }  # fmt: skip
    return found


def rates_table(studies: int, seed: int = 0) -> pd.DataFrame:
    rows = []
    for scenario in SCENARIOS:
        for rule, measured in rates(scenario, studies, seed).items():
            rows.append({"scenario": scenario.name, "seeds": scenario.n, "expected": scenario.expect, "rule": rule, **measured})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.verdict_rates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2000, help="synthetic studies per scenario (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic studies (default 0)")
    parser.add_argument("--out", type=Path, default=Path("results") / "verdict_rates", help="file stem (default results/verdict_rates)")
    args = parser.parse_args(argv)
    table = rates_table(args.studies, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    shown = table.copy()
    for column in ("worse", "better", "equivalent", "family-wise false difference"):
        shown[column] = [f"{value:.1f}" for value in shown[column]]
    se = 100 * math.sqrt(0.05 * 0.95 / args.studies)
    note = (
        f"{args.studies} synthetic studies a scenario (seed {args.seed}), a family of 9 comparisons each, margin ±{MARGIN} pp, "
        f"Holm-adjusted α = {ALPHA}; rates in % of studies (a 5 % rate is measured to ±{se:.1f}, one standard error). "
        "worse / better / equivalent: the verdict on the comparison under test; family-wise false difference: a comparison "
        "with no effect called worse or better. Made by `python -m analysis.verdict_rates`."
    )
    args.out.with_suffix(".md").write_text(shown.to_markdown(index=False) + f"\n\n{note}\n", encoding="utf-8")
    print(shown.to_markdown(index=False))
    print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
