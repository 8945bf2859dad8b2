"""Results tables from `load_runs`' frame: per-variant test error and per-factor effects,
each comparison with its verdict (`verdicts`).

Seeds are the unit of replication. Several finished runs of one variant and seed (a re-run)
count once, as their mean, so that n is the number of seeds and pairing by seed is defined.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import re
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from lenet5.config import ABLATION_FACTORS, Config, Dataset

from .runs import FACTORS, ReportError, scientific_params

CONFIDENCE = 0.95
#: The `variant=` delta that leaves a preset as it is: preferred when a baseline filter matches several variants.
PRESET_AS_IS = "none"
#: The variant used as baseline when none is named: the paper preset with no delta.
DEFAULT_BASELINE = "paper"

#: Family-wise error rate of every verdict, and the power the seeds a comparison needs are planned for.
ALPHA = 0.05
POWER = 0.8
#: The equivalence margin δ by dataset (`data.dataset`), in percentage points of test error: two
#: variants closer than ±δ are "the same" for this suite. MNIST: 0.1 points, 10 of the 10,000 test
#: images, about 1.6 times the spread of a paired difference across seeds (0.062 points, pooled
#: over mnist-ofat's seven comparisons). Fashion-MNIST's seeds spread about four times as much
#: (paired differences 0.27 points pooled over fashion-ofat's seven, one variant's seeds 0.26
#: against MNIST's 0.07), so 0.1 scaled by that spread is 0.35 to 0.44; 0.4 (40 test images, 4%
#: of its 10% error) keeps δ about 1.5 paired standard deviations as on MNIST. A smaller δ would
#: ask for more seeds than the noise can pay for, a larger one would call 0.5-point effects
#: "equivalent" on a dataset where the optimizer alone moves the error by a point.
MARGINS: dict[str, float] = {Dataset.mnist.value: 0.1, Dataset.fashion_mnist.value: 0.4}
#: More seeds than this is no plan: `seeds_needed` says no n within it decides the comparison
#: (inf). 200 MNIST finals of 20 passes are about 37 core-hours for one comparison.
SEEDS_CAP = 200
#: Verdict of a comparison (`verdicts`); the baseline's own row has none ("").
WORSE, BETTER, EQUIVALENT, UNDECIDED = "worse", "better", "equivalent", "undecided"
#: The rule of every verdict (docs/studies.md#verdicts): Wilcoxon signed-rank tests on the paired
#: differences, the Hodges-Lehmann estimate as the effect. The paired t-test was the rule declared
#: for the studies published before it (mnist-ofat, mnist-path, fashion-ofat); its verdict stays
#: beside the new one in every table (`verdict_t`), so those studies' declared answer is not lost.
RULE = "signed-rank"
#: A final whose test error is this close to chance (90 % on ten classes) or closer has stalled:
#: it learned nothing, whatever its rate (docs/studies.md#stalls).
CHANCE_ERROR = 90.0
STALL_ERROR = CHANCE_ERROR - 10.0
#: Resolution of the paired differences, points of test error: test errors are counts over at most
#: 10,000 images (0.01 points), so differences are rounded to 1e-6 before ranking, lest float
#: round-off (1.03 - 0.98 = 0.05000000000000004) break ties that are real (scipy's advice).
DIFFERENCE_DECIMALS = 6
#: Simulated studies behind each plan (`seeds_needed`), and their seed: the plan is a pure
#: function of the observed differences, so a report rebuilds byte for byte.
PLAN_STUDIES, PLAN_SEED = 300, 0
VERDICT_COLUMNS = [
    "n", "diff", "ci_low", "ci_high", "mean_diff", "sd", "p", "p_holm", "p_tost", "p_tost_holm", "verdict", "seeds_needed",
    "p_t_holm", "p_t_tost_holm", "verdict_t",
]  # fmt: skip
_VERDICT_FIELDS = ["p", "p_holm", "p_tost", "p_tost_holm", "verdict", "seeds_needed", "p_t_holm", "p_t_tost_holm", "verdict_t"]

VARIANT_COLUMNS = [
    "variant", "n", "mean", "std", "ci_low", "ci_high", "diff", "n_paired", "effect", "effect_low", "effect_high",
    *_VERDICT_FIELDS, "stalls", "stall_p", "stall_p_holm", "best", "baseline", "margin",
]  # fmt: skip
FACTOR_COLUMNS = [
    "factor", "change", "effect", "ci_low", "ci_high", "mean_effect", "n_pairs", "n", *_VERDICT_FIELDS, "flag", "margin",
]  # fmt: skip


def holm(p_values: typing.Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of m p-values (statsmodels' `multipletests`, method "holm"),
    which controls the family-wise error rate; NaN entries are left out of m and stay NaN."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        with _collecting_only_new_objects():
            adjusted[tested] = multipletests(p[tested], method="holm")[1]
    return adjusted


@contextlib.contextmanager
def _collecting_only_new_objects() -> typing.Iterator[None]:
    """statsmodels' Holm branch ends with `gc.collect()` (statsmodels PR 8671 would remove it): a
    full collection, about 0.25 s in a process holding torch, Lightning and MLflow, paid twice per
    `verdicts`. Freezing the objects that exist first makes it scan only the new ones (0.03 s a
    `verdicts` there); they are unfrozen after. A freeze someone else holds is left alone."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def default_margin(runs: pd.DataFrame) -> float:
    """The margin (points of test error) for `load_runs`' frame `runs`: `MARGINS` of its
    dataset; of several datasets, the smallest (the strictest equivalence)."""
    datasets = set(runs["dataset"].dropna()) if "dataset" in runs else set()
    unknown = datasets - set(MARGINS)
    if unknown:
        raise ReportError(f"no default equivalence margin for dataset {', '.join(sorted(unknown))}: give one (--margin)")
    return min(MARGINS[d] for d in datasets) if datasets else MARGINS[Dataset.mnist.value]


def _signed_rank_method(n: int) -> str:
    """scipy's exact null distribution up to 50 differences (its own limit for "auto"), the normal
    approximation beyond. Ties are ranked by their midranks under the exact distribution (scipy
    honours an explicit "exact"); its permutation method, exact with ties, takes 70 s at n = 16."""
    return "exact" if n <= 50 else "asymptotic"


def signed_rank_p_values(differences: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(two-sided Wilcoxon signed-rank p of "centred on 0", signed-rank TOST p of "centred within
    ±margin") along the last axis of `differences` (points of test error, no NaN, at least 2 a
    row), each row one comparison: scipy.stats.wilcoxon, zeros discarded (its default). The TOST
    is the larger p of the one-sided tests of d - margin (alternative: below 0) and d + margin
    (above 0), as TOSTER's wilcox_TOST."""
    d = np.round(np.asarray(differences, dtype=float), DIFFERENCE_DECIMALS)
    method = _signed_rank_method(d.shape[-1])
    p = stats.wilcoxon(d, axis=-1, method=method).pvalue
    # "d + margin above 0" is "-(d + margin) below 0": both one-sided tests in one call.
    shifted = np.round(np.stack([d - margin, -(d + margin)]), DIFFERENCE_DECIMALS)
    below, above = stats.wilcoxon(shifted, axis=-1, alternative="less", method=method).pvalue
    return np.asarray(p, dtype=float), np.maximum(below, above)


def t_p_values(differences: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(paired t-test p, t TOST p) along the last axis, the rule the first published studies
    declared: scipy's one-sample t-tests of the differences against 0, and against -margin
    (greater) and +margin (less). Rows without spread get p 1 or 0 (their t is 0/0 or infinite)."""
    d = np.asarray(differences, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_1samp(d, 0.0, axis=-1).pvalue
        p_tost = np.maximum(
            stats.ttest_1samp(d, -margin, axis=-1, alternative="greater").pvalue,
            stats.ttest_1samp(d, margin, axis=-1, alternative="less").pvalue,
        )
    mean, flat = d.mean(axis=-1), d.std(axis=-1) == 0
    p = np.where(flat, np.where(mean == 0, 1.0, 0.0), p)
    p_tost = np.where(flat, np.where(np.abs(mean) < margin, 0.0, 1.0), p_tost)
    return np.asarray(p, dtype=float), np.asarray(p_tost, dtype=float)


def walsh_median(differences: np.ndarray) -> np.ndarray:
    """The Hodges-Lehmann estimate along the last axis: the median of the n(n+1)/2 Walsh averages
    (d_i + d_j) / 2, i <= j (points of test error, like `differences`)."""
    i, j = np.triu_indices(differences.shape[-1])
    return np.median((differences[..., i] + differences[..., j]) / 2, axis=-1)


def hodges_lehmann(differences: typing.Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(estimate, low, high): the Hodges-Lehmann estimate of the centre of the paired differences
    (the median of the n(n+1)/2 Walsh averages (d_i + d_j) / 2, i <= j; points of test error) and
    its 95% interval, the shifts θ that the two-sided signed-rank test of d - θ does not reject at
    5 % (unadjusted), found by testing between each pair of neighbouring Walsh averages, where
    the test's verdict can change. An end no shift rejects is infinite (2 seeds can reject none,
    5 at most the far ones). (NaN, NaN, NaN) without differences."""
    d = np.round(np.asarray(differences, dtype=float), DIFFERENCE_DECIMALS)
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    i, j = np.triu_indices(len(d))
    walsh = np.unique(np.round((d[i] + d[j]) / 2, DIFFERENCE_DECIMALS + 1))
    estimate = float(walsh_median(d))
    if len(d) < 2 or len(walsh) < 2:
        return estimate, (-math.inf if len(d) < 2 else estimate), (math.inf if len(d) < 2 else estimate)
    shifts = np.concatenate(([walsh[0] - 1], (walsh[:-1] + walsh[1:]) / 2, [walsh[-1] + 1]))
    p = stats.wilcoxon(d[None, :] - shifts[:, None], axis=-1, method=_signed_rank_method(len(d))).pvalue
    kept = np.flatnonzero(p >= 1 - CONFIDENCE)
    low = -math.inf if kept[0] == 0 else float(walsh[kept[0] - 1])
    high = math.inf if kept[-1] == len(walsh) else float(walsh[kept[-1]])
    return estimate, low, high


def _plan_draws(differences: np.ndarray) -> np.ndarray:
    """PLAN_STUDIES simulated studies of SEEDS_CAP seeds each (rows), drawn from the observed
    differences by a smoothed bootstrap: each seed a resampled difference plus normal noise of
    Silverman's bandwidth, 0.9 n^(-1/5) times a robust spread (1.4826 x the median absolute
    deviation; the sample sd when that is 0), so that a stall among the observed seeds comes
    back at its observed rate and size without widening every other seed. Rows are nested: a
    study of n seeds is the first n columns, as adding seeds to a study adds columns."""
    rng = np.random.default_rng(PLAN_SEED)
    spread = 1.4826 * float(np.median(np.abs(differences - np.median(differences))))
    if spread == 0:
        spread = float(np.std(differences, ddof=1))
    bandwidth = 0.9 * spread * len(differences) ** -0.2
    picks = rng.integers(0, len(differences), size=(PLAN_STUDIES, SEEDS_CAP))
    return differences[picks] + rng.normal(0.0, 1.0, size=picks.shape) * bandwidth


def _plan_sizes(start: int) -> list[int]:
    """The study sizes a plan tries, from `start`: every n to 40, then every 5th to 100, every 10th to SEEDS_CAP."""
    sizes = [*range(start, 41), *range(45, 101, 5), *range(110, SEEDS_CAP + 1, 10)]
    return [n for n in sizes if n >= start]


def seeds_needed(
    differences: typing.Sequence[float] | np.ndarray, margin: float, alpha: float = ALPHA, power: float = POWER, family: int = 1
) -> float:
    """Seeds (paired differences) that would decide one comparison under `RULE`, planned from the
    n observed `differences` (points of test error, like `margin`): the smallest n > observed
    (tried as `_plan_sizes` lists) at which at least `power` of PLAN_STUDIES simulated studies of
    n seeds (`_plan_draws`) reach a decision at level alpha / family (Bonferroni over the `family`
    of comparisons: a conservative plan for the Holm-adjusted tests): a difference shown
    (two-sided signed-rank p) or equivalence within ±margin shown (signed-rank TOST p). inf when
    no n up to SEEDS_CAP does (the difference sits near the margin, or the seeds spread too much);
    NaN with fewer than 2 differences to plan from. An exact rank test needs n seeds all pointing
    one way to reach p = 2^(1-n), so no spread, however small, decides with fewer than
    log2(2 family / alpha) seeds; the plan knows it because it runs the test itself."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return math.nan
    draws, level = _plan_draws(d), alpha / max(family, 1)

    def enough(n: int) -> bool:
        p, p_tost = signed_rank_p_values(draws[:, :n], margin)
        return bool(np.mean((p < level) | (p_tost < level)) >= power)

    # Probe every 1st, 2nd, 4th, 8th... size, then walk the last bracket one size at a time: the
    # probes do not depend on the level, so a larger level (a smaller family), whose simulated
    # power is at least as high at every n, never plans more seeds.
    sizes, low, probe = _plan_sizes(len(d) + 1), -1, 0
    while probe < len(sizes) and not enough(sizes[probe]):
        low, probe = probe, 2 * probe + 1
    if probe >= len(sizes):
        probe = len(sizes) - 1
        if not enough(sizes[probe]):
            return math.inf
    return float(next(sizes[i] for i in range(low + 1, probe + 1) if i == probe or enough(sizes[i])))


def verdicts(
    differences: Mapping[str, typing.Sequence[float] | np.ndarray | pd.Series],
    margin: float,
    alpha: float = ALPHA,
    power: float = POWER,
) -> pd.DataFrame:
    """The verdict of each comparison against its reference, from its paired differences, under
    `RULE` (docs/studies.md#verdicts), with the paired t-test's verdict beside it.

    `differences`: {comparison label: its per-seed paired differences, variant - reference, in
    percentage points of test error (positive: the variant errs more); 1-D, NaN dropped}.
    `margin`: the equivalence margin δ, in points of test error. The comparisons are one
    family: Holm adjusts the two-sided tests' p-values over the family, and separately the TOSTs'.

    Returns one row per comparison (index: its label, in the given order), columns:
    n (differences), diff (their Hodges-Lehmann estimate, points) with ci_low/ci_high (its 95%
    interval, `hodges_lehmann`), mean_diff and sd (their mean and sample standard deviation),
    p (two-sided Wilcoxon signed-rank test of "centred on 0"), p_holm, p_tost (signed-rank TOST of
    "within ±δ"), p_tost_holm, verdict and seeds_needed; then the paired t-test's p_t_holm,
    p_t_tost_holm and verdict_t, by the same rule with t-tests in place of the signed-rank tests:

    - "worse" / "better": p_holm < alpha, diff > 0 / < 0 (a difference shown, even one inside ±δ);
    - "equivalent": otherwise, p_tost_holm < alpha;
    - "undecided": neither, or fewer than 2 differences (no test: p NaN).

    A stalled seed (`STALL_ERROR`) enters as its difference, by its rank: it weighs as much as the
    largest other difference of its sign, however large. seeds_needed: for an undecided
    comparison, `seeds_needed` from its differences at alpha / m (m: the comparisons with a test);
    inf when no number of seeds up to SEEDS_CAP would decide it; NaN when decided, or with fewer
    than 2 differences. Tests: scipy.stats.wilcoxon and ttest_1samp; Holm: statsmodels.
    """
    rows, kept = {}, {}
    for label, values in differences.items():
        d = np.asarray(values, dtype=float).ravel()
        d = d[~np.isnan(d)]
        kept[label] = d
        n = len(d)
        estimate, low, high = hodges_lehmann(d)
        row = {"n": n, "diff": estimate, "ci_low": low, "ci_high": high, "mean_diff": d.mean() if n else math.nan,
               "sd": d.std(ddof=1) if n >= 2 else math.nan, "p": math.nan, "p_tost": math.nan, "p_t": math.nan, "p_t_tost": math.nan}  # fmt: skip
        if n >= 2:
            (p,), (p_tost,) = signed_rank_p_values(d[None, :], margin)
            (p_t,), (p_t_tost,) = t_p_values(d[None, :], margin)
            row |= {"p": p, "p_tost": p_tost, "p_t": p_t, "p_t_tost": p_t_tost}
        rows[label] = row
    if not rows:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["n"] = table["n"].astype(int)
    for prefix in ("p", "p_t"):
        table[f"{prefix}_holm"] = holm(table[prefix])
        table[f"{prefix}_tost_holm"] = holm(table[f"{prefix}_tost"])
    table["verdict"] = _verdict(table["diff"], table["p_holm"], table["p_tost_holm"], alpha)
    table["verdict_t"] = _verdict(table["mean_diff"], table["p_t_holm"], table["p_t_tost_holm"], alpha)
    family = int(table["p"].notna().sum())
    table["seeds_needed"] = [
        seeds_needed(kept[label], margin, alpha, power, family) if verdict == UNDECIDED else math.nan
        for label, verdict in zip(table.index, table["verdict"])
    ]
    return table[VERDICT_COLUMNS]


def _verdict(centre: pd.Series, p_holm: pd.Series, p_tost_holm: pd.Series, alpha: float) -> list[str]:
    return [
        (WORSE if c > 0 else BETTER) if p < alpha else EQUIVALENT if q < alpha else UNDECIDED
        for c, p, q in zip(centre, p_holm, p_tost_holm)
    ]


def stall_counts(errors: pd.Series) -> int:
    """How many of a variant's per-seed test errors (%) are stalls (at or above `STALL_ERROR`)."""
    return int((errors.dropna() >= STALL_ERROR).sum())


def stall_test(stalls: int, n: int, baseline_stalls: int, baseline_n: int) -> float:
    """Two-sided p of Fisher's exact test (scipy.stats.fisher_exact) that a variant's stall rate
    (stalls of n seeds) equals the baseline's; NaN without seeds on either side."""
    if n == 0 or baseline_n == 0:
        return math.nan
    return float(stats.fisher_exact([[stalls, n - stalls], [baseline_stalls, baseline_n - baseline_stalls]]).pvalue)


def verdict_summary(table: pd.DataFrame, margin: float, alpha: float = ALPHA) -> str:
    """One line counting the verdicts of a table with `verdict` and `seeds_needed` columns
    (`verdicts`, `variant_table`, `factor_table`; rows without a verdict, a baseline, left out),
    e.g. "Verdicts at margin ±0.1 pp, Holm-adjusted α = 0.05: 3 worse, 2 equivalent,
    2 undecided (need 12 and 13 seeds). Paired t-test: 2 worse, 2 equivalent, 3 undecided."
    (the t-test's count where the table has `verdict_t`)."""
    judged = table[table["verdict"] != ""]
    counts = judged["verdict"].value_counts()
    parts = [f"{counts[v]} {v}" for v in (WORSE, BETTER, EQUIVALENT, UNDECIDED) if counts.get(v, 0)]
    if counts.get(UNDECIDED, 0):
        needed = judged.loc[judged["verdict"] == UNDECIDED, "seeds_needed"]
        finite = sorted(int(s) for s in needed if np.isfinite(s))
        details = []
        if finite:
            listed = ", ".join(map(str, finite[:-1])) + " and " if len(finite) > 1 else ""
            details.append(f"need {listed}{finite[-1]} seeds")
        if (never := int(np.isinf(needed).sum())):
            details.append(f"no number of seeds up to {SEEDS_CAP} decides {never}")
        if (untested := int(needed.isna().sum())):
            details.append(f"{untested} with under 2 paired seeds")
        parts[-1] += f" ({'; '.join(details)})"
    line = f"Verdicts at margin ±{margin:g} pp, Holm-adjusted α = {alpha:g}: {', '.join(parts) or 'no comparisons'}."
    if "verdict_t" in judged and len(judged):
        counts_t = judged["verdict_t"].value_counts()
        line += " Paired t-test: " + ", ".join(f"{counts_t[v]} {v}" for v in (WORSE, BETTER, EQUIVALENT, UNDECIDED) if counts_t.get(v, 0)) + "."
    return line


def t_interval(values: typing.Sequence[float]) -> tuple[float, float]:
    """Student-t 95% interval of the mean of `values`; (NaN, NaN) for fewer than two values.

    Written as mean +- t * sem (not `stats.t.interval`) so that identical values give a
    zero-width interval rather than NaN.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half_width = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return values.mean() - half_width, values.mean() + half_width


def seed_errors(runs: pd.DataFrame) -> pd.DataFrame:
    """Final test error (%) per variant and seed: index variant, columns seeds, NaN where missing."""
    return runs.pivot_table(index="variant", columns="seed", values="test_error", aggfunc="mean")


def _variants_in_order(runs: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(runs["variant"]))


def select_baseline(runs: pd.DataFrame, baseline: str | None) -> str | None:
    """The variant label `baseline` names: a label itself, or space/comma separated key=value
    filters over experiment, variant (the `variant=` delta), the factors (`pool=max`) or their
    config keys (`model.pool=max`). Several matches: the one whose delta is "none", else an
    error. None: the variant labelled "paper" when there is one, else the one labelled "paper"
    but for its dataset ("paper dataset=fashion_mnist": a run's name carries a dataset other
    than MNIST), when exactly one is."""
    variants = _variants_in_order(runs)
    if baseline is None:
        if DEFAULT_BASELINE in variants:
            return DEFAULT_BASELINE
        on_other_data = [v for v in variants if re.sub(r" dataset=\S+", "", v) == DEFAULT_BASELINE]
        return on_other_data[0] if len(on_other_data) == 1 else None
    if baseline in variants:
        return baseline
    filters = _parse_filters(baseline, variants)
    matches = runs
    for column, value in filters.items():
        matches = matches[matches[column] == value]
    candidates = _variants_in_order(matches)
    if len(candidates) > 1:
        candidates = _variants_in_order(matches[matches["delta"] == PRESET_AS_IS]) or candidates
    if len(candidates) != 1:
        found = "; ".join(candidates) if candidates else "none"
        raise ReportError(f"baseline '{baseline}' must match one variant, matches: {found}")
    return candidates[0]


def _parse_filters(baseline: str, variants: list[str]) -> dict[str, str]:
    columns = {"experiment": "experiment", "variant": "delta", **{f: f for f in FACTORS}}
    columns |= {key: factor for factor, key in ABLATION_FACTORS.items()}
    filters = {}
    for term in re.split(r"[,\s]+", baseline.strip()):
        key, equals, value = term.partition("=")
        if not equals or key not in columns:
            raise ReportError(
                f"baseline '{baseline}' is neither a variant ({'; '.join(variants)}) "
                f"nor key=value filters over {', '.join(columns)}"
            )
        filters[columns[key]] = value
    return filters


def variant_table(runs: pd.DataFrame, baseline: str | None = None, margin: float | None = None) -> pd.DataFrame:
    """One row per variant, seeds pooled; test errors in %, differences in percentage points.

    Columns: variant, n (seeds), mean, std (sample, NaN for n=1), ci_low/ci_high (95%
    Student-t interval of the mean, NaN for n=1), diff (mean - baseline mean), n_paired
    (seeds shared with the baseline, 0 on its own row), effect/effect_low/effect_high (the
    Hodges-Lehmann estimate of the paired differences and its 95% interval), then the verdict
    against the baseline from the paired differences on those seeds (`verdicts`, the tested
    variants one family): p (signed-rank, NaN below 2 pairs), p_holm, p_tost, p_tost_holm,
    verdict ("" on the baseline's row), seeds_needed, and the paired t-test's p_t_holm,
    p_t_tost_holm, verdict_t; stalls (seeds at or above `STALL_ERROR`), stall_p (Fisher's exact
    test of the variant's stall rate against the baseline's, all seeds of each) and stall_p_holm
    (Holm over the variants); best (lowest mean), baseline, margin (δ, points).
    `baseline`: see `select_baseline`; the baseline columns stay NaN when there is none.
    `margin`: the equivalence margin in points of test error (None: `default_margin`).
    Rows: the baseline first, then variants in the order they were first run.
    """
    errors = seed_errors(runs)
    chosen = select_baseline(runs, baseline)
    order = _variants_in_order(runs)
    if chosen is not None:
        order.remove(chosen)
        order.insert(0, chosen)
    rows, paired = [], {}
    for variant in order:
        values = errors.loc[variant].dropna()
        ci_low, ci_high = t_interval(values)
        row = {
            "variant": variant, "n": len(values), "mean": values.mean(),
            "std": values.std(ddof=1) if len(values) > 1 else math.nan,
            "ci_low": ci_low, "ci_high": ci_high, "diff": math.nan, "n_paired": 0,
        }
        if chosen is not None:
            row["diff"] = row["mean"] - errors.loc[chosen].mean()
        if chosen is not None and variant != chosen:
            paired[variant] = _seed_differences(errors, chosen, variant)
            row["n_paired"] = len(paired[variant])
        rows.append(row)
    table = pd.DataFrame(rows)
    margin = default_margin(runs) if margin is None else margin
    judged = verdicts(paired, margin).reindex(table["variant"])
    table["effect"], table["effect_low"], table["effect_high"] = (judged[c].to_numpy() for c in ("diff", "ci_low", "ci_high"))
    for column in _VERDICT_FIELDS:
        table[column] = judged[column].to_numpy()
    table["verdict"] = table["verdict"].fillna("")
    table["verdict_t"] = table["verdict_t"].fillna("")
    table["stalls"] = [stall_counts(errors.loc[variant]) for variant in table["variant"]]
    if chosen is not None:
        base = table.set_index("variant").loc[chosen]
        table["stall_p"] = [
            math.nan if variant == chosen else stall_test(stalls, n, int(base["stalls"]), int(base["n"]))
            for variant, stalls, n in zip(table["variant"], table["stalls"], table["n"])
        ]
    else:
        table["stall_p"] = math.nan
    table["stall_p_holm"] = holm(table["stall_p"])
    table["best"] = table["mean"] == table["mean"].min()
    table["baseline"] = table["variant"] == chosen
    table["margin"] = margin
    return table[VARIANT_COLUMNS]


def _choice_order(dotted_key: str) -> list[str]:
    """The choices of a factor in its enum's order, the paper's first (`model.pool` -> subsample, max, avg)."""
    node: typing.Any = Config
    for part in dotted_key.split("."):
        node = typing.get_type_hints(node)[part]
    return [member.value for member in node]


CHOICE_ORDER = {factor: _choice_order(key) for factor, key in ABLATION_FACTORS.items()}
#: Params that come with a factor's choice (each optimizer and loss carries its own settings).
FACTOR_PARAM_PREFIXES = {"optim": "optim.", "loss": "loss."}


def _same(x: object, y: object) -> bool:
    """Equal, counting two missing values (a param or tag neither run logged) as equal."""
    return (pd.isna(x) and pd.isna(y)) or x == y


def _differences(a: pd.Series, b: pd.Series, params: list[str]) -> tuple[list[str], list[str]]:
    """(factors, other scientific params) on which two variants' configurations differ."""
    factors = [f for f in FACTORS if not _same(a[f], b[f])]
    absorbed = tuple(FACTOR_PARAM_PREFIXES[f] for f in factors if f in FACTOR_PARAM_PREFIXES)
    others = [key for key in params if not key.startswith(absorbed) and not _same(a[key], b[key])]
    return factors, others


def _from_paper_side(a: pd.Series, b: pd.Series, factors: list[str]) -> tuple[pd.Series, pd.Series]:
    """(a, b) ordered so that the first differing factor goes from its earlier (paper-side) choice."""
    first = factors[0]
    order = CHOICE_ORDER[first]
    # A choice the config no longer offers (an old run) sorts after the current ones.
    rank_a, rank_b = (order.index(v) if v in order else len(order) for v in (a[first], b[first]))
    return (a, b) if rank_a <= rank_b else (b, a)


def _seed_differences(errors: pd.DataFrame, source: str, target: str) -> pd.Series:
    """target - source test error (pp) on each seed both variants have."""
    return (errors.loc[target] - errors.loc[source]).dropna()


@dataclass
class _Comparison:
    """Two variants, oriented from the paper's side, and what tells them apart."""

    factors: list[str]
    other_params: list[str]
    change: str  # "rbf → softmax, map → cross_entropy": each differing factor, from → to
    other_changes: str  # "data.batch_size (32 → 64)"
    differences: pd.Series  # per shared seed, to - from (pp)

    @property
    def clean(self) -> bool:
        return len(self.factors) == 1 and not self.other_params

    @property
    def difference_set(self) -> set[str]:
        return set(self.factors) | set(self.other_params)

    @property
    def flag(self) -> str:
        flags = [f"confounded: {' and '.join(self.factors)} change together"] if len(self.factors) > 1 else []
        flags += [f"also differs: {self.other_changes}"] if self.other_params else []
        return "; ".join(flags)


def _comparisons(runs: pd.DataFrame, tuned: tuple[str, ...] = ()) -> list[_Comparison]:
    """Every pair of variants that differs in at least one factor and shares at least one seed
    (params in `tuned` are not differences: see `factor_table`)."""
    errors = seed_errors(runs)
    params = [key for key in scientific_params(runs) if key not in tuned]
    configs = runs.drop_duplicates("variant").set_index("variant", drop=False)
    found = []
    for name_a, name_b in itertools.combinations(configs.index, 2):
        a, b = configs.loc[name_a], configs.loc[name_b]
        factors, others = _differences(a, b, params)
        if not factors:
            continue
        source, target = _from_paper_side(a, b, factors)
        differences = _seed_differences(errors, source["variant"], target["variant"])
        if not differences.empty:
            found.append(
                _Comparison(
                    factors,
                    others,
                    ", ".join(f"{source[f]} → {target[f]}" for f in factors),
                    ", ".join(f"{key} ({source[key]} → {target[key]})" for key in others),
                    differences,
                )
            )
    return found


def factor_table(runs: pd.DataFrame, tuned: tuple[str, ...] = (), margin: float | None = None) -> pd.DataFrame:
    """The effect of each ablation factor, from whichever variant pairs isolate it.

    A pair of variants that differs in exactly one factor (plus that factor's own `optim.*` /
    `loss.*` settings) and in no other scientific param is a clean comparison. Clean pairs
    are grouped by (factor, from, to), oriented from the paper's choice; effect is the
    Hodges-Lehmann estimate of the per-seed differences to - from (percentage points of test
    error, negative = the change helps), with its 95% interval (`hodges_lehmann`; infinite ends
    where too few seeds bound it); mean_effect is their mean.
    n_pairs counts variant pairs (with at least one shared seed), n the paired seeds.

    Pairs that differ in more than the factor (several factors, or another param) are
    flagged rows of their own, grouped the same way, shown only for factors that have no
    clean row and only when no other such pair differs in a strict subset of what they
    differ in. Columns: see `FACTOR_COLUMNS`; clean rows have an empty flag. Rows: in the
    config's factor order, clean before flagged.

    Each row also gets the verdict of its change from its own paired differences (`verdicts`,
    the table's rows one family; "worse": the change raises the error): p, p_holm, p_tost,
    p_tost_holm, verdict, seeds_needed, and margin (δ in points; None: `default_margin`).

    `tuned`: params each variant had selected for it on validation data (a fair study's
    `optim.lr`): nuisance settings that are meant to differ, so they are no difference.
    """
    comparisons = _comparisons(runs, tuned)
    cleanly_measured = {c.factors[0] for c in comparisons if c.clean}
    candidates = [c for c in comparisons if not c.clean]
    shown = [
        c for c in comparisons
        if c.clean
        or (
            not cleanly_measured & set(c.factors)
            and not any(other.difference_set < c.difference_set for other in candidates)
        )
    ]
    groups: dict[tuple[str, str, str], list[pd.Series]] = {}
    for c in shown:
        groups.setdefault(("+".join(c.factors), c.change, c.flag), []).append(c.differences)
    margin = default_margin(runs) if margin is None else margin
    judged = verdicts({str(i): pd.concat(found) for i, found in enumerate(groups.values())}, margin)
    rows = [
        _effect_row(*key, found) | judged.loc[str(i), ["ci_low", "ci_high", *_VERDICT_FIELDS]].to_dict()
        | {"effect": judged.loc[str(i), "diff"], "mean_effect": judged.loc[str(i), "mean_diff"]}
        for i, (key, found) in enumerate(groups.items())
    ]
    table = pd.DataFrame(rows, columns=FACTOR_COLUMNS).assign(margin=margin)
    rank = {factor: index for index, factor in enumerate(FACTORS)}
    sort_key = table["factor"].str.split("+").str[0].map(rank) * 2 + (table["flag"] != "")
    return table.iloc[np.argsort(sort_key.to_numpy(), kind="stable")].reset_index(drop=True)


def _effect_row(factor: str, change: str, flag: str, differences: list[pd.Series]) -> dict:
    return {"factor": factor, "change": change, "n_pairs": len(differences), "n": sum(len(d) for d in differences), "flag": flag}
