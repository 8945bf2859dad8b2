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
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW
from statsmodels.tools.sm_exceptions import ConvergenceWarning

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
#: More seeds than this is no plan: `seeds_needed` says no n decides the comparison (inf).
SEEDS_CAP = 1000
#: Verdict of a comparison (`verdicts`); the baseline's own row has none ("").
WORSE, BETTER, EQUIVALENT, UNDECIDED = "worse", "better", "equivalent", "undecided"
VERDICT_COLUMNS = ["n", "diff", "sd", "p", "p_holm", "p_tost", "p_tost_holm", "verdict", "seeds_needed"]
_VERDICT_FIELDS = ["p", "p_holm", "p_tost", "p_tost_holm", "verdict", "seeds_needed"]

VARIANT_COLUMNS = [
    "variant", "n", "mean", "std", "ci_low", "ci_high", "diff", "n_paired", *_VERDICT_FIELDS, "best", "baseline", "margin",
]
FACTOR_COLUMNS = ["factor", "change", "effect", "ci_low", "ci_high", "n_pairs", "n", *_VERDICT_FIELDS, "flag", "margin"]


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


def _paired_p_values(differences: np.ndarray, margin: float) -> tuple[float, float]:
    """(two-sided t-test of mean 0, TOST of |mean| < margin) on n >= 2 paired differences."""
    statistics = DescrStatsW(differences)
    if statistics.std == 0:  # no spread: the t statistics are infinite or 0/0
        mean = statistics.mean
        return (1.0 if mean == 0 else 0.0), (0.0 if abs(mean) < margin else 1.0)
    return float(statistics.ttest_mean(0.0)[1]), float(statistics.ttost_mean(-margin, margin)[0])


def _n_for_power(effect: float, alpha: float, power: float, alternative: str, at_least: int) -> float:
    """Smallest whole n >= `at_least` at which a one-sample t-test (`TTestPower`) of `effect`
    reaches `power` at level `alpha`: `TTestPower.solve_power`'s n rounded up; inf beyond
    `SEEDS_CAP`. statsmodels' root finder now and then fails or stops off the root (large
    effects, small n), so its answer is checked, and searched for with `TTestPower.power` when wrong."""
    analysis = TTestPower()

    def enough(n: float) -> bool:
        achieved = analysis.power(effect_size=effect, nobs=n, alpha=alpha, alternative=alternative)
        if np.isnan(achieved) and alternative == "two-sided":
            # scipy's noncentral t gives NaN for the far tail opposite a large effect, a term
            # of about 0: the near tail alone (the one-sided power at alpha / 2) is the power.
            achieved = analysis.power(effect_size=effect, nobs=n, alpha=alpha / 2, alternative="larger")
        return achieved >= power

    if math.isinf(effect) or enough(at_least):
        return float(at_least)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        solved = analysis.solve_power(effect_size=effect, nobs=None, alpha=alpha, power=power, alternative=alternative)
    if np.isfinite(solved) and solved > at_least:
        n = math.ceil(solved)
        if n > SEEDS_CAP or (enough(n) and not enough(n - 1)):
            return float(n)
    # Not enough at `low`: double `high` until enough (power < 0.8 at low keeps the
    # noncentrality far below where scipy's tails turn NaN), then halve the gap.
    low, high = at_least, 2 * at_least
    while not enough(high):
        if high > SEEDS_CAP:
            return math.inf
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return float(high)


def seeds_needed(
    diff: float, sd: float, margin: float, n: int, alpha: float = ALPHA, power: float = POWER, family: int = 1
) -> float:
    """Seeds (paired differences) that would decide one comparison, planned from what `n` seeds
    showed: mean paired difference `diff` and its sample standard deviation `sd` (points of
    test error, like `margin`), at level alpha / family (Bonferroni over the `family` of
    comparisons: a conservative plan for the Holm-adjusted tests) with power `power`.

    Two plans: show the difference (effect |diff| / sd, two-sided test), or show equivalence
    within ±margin (effect (margin - |diff|) / sd, one-sided: the usual approximation of TOST's
    power by its test against the nearer margin; impossible when |diff| >= margin). The answer
    is the smaller achievable n, rounded up and at least n + 1; inf when neither is achievable
    within `SEEDS_CAP` seeds (the observed difference sits at the margin, or there is none to
    show and no room under the margin); NaN without a spread to plan from (n < 2 or sd NaN).
    """
    if n < 2 or not sd >= 0 or math.isnan(diff):
        return math.nan
    level = alpha / max(family, 1)
    with np.errstate(divide="ignore"):
        plans = []
        if diff != 0:
            plans.append(_n_for_power(abs(diff) / np.float64(sd), level, power, "two-sided", n + 1))
        if abs(diff) < margin:
            plans.append(_n_for_power((margin - abs(diff)) / np.float64(sd), level, power, "larger", n + 1))
    needed = min(plans, default=math.inf)
    return math.inf if needed > SEEDS_CAP else needed


def verdicts(
    differences: Mapping[str, typing.Sequence[float] | np.ndarray | pd.Series],
    margin: float,
    alpha: float = ALPHA,
    power: float = POWER,
) -> pd.DataFrame:
    """The verdict of each comparison against its reference, from its paired differences.

    `differences`: {comparison label: its per-seed paired differences, variant - reference, in
    percentage points of test error (positive: the variant errs more); 1-D, NaN dropped}.
    `margin`: the equivalence margin δ, in points of test error. The comparisons are one
    family: Holm adjusts the t-tests' p-values over the family, and separately the TOSTs'.

    Returns one row per comparison (index: its label, in the given order), columns:
    n (differences), diff (their mean, points), sd (their sample standard deviation, points),
    p (two-sided one-sample t-test of mean 0, i.e. the paired t-test), p_holm, p_tost (two
    one-sided tests of -δ < mean < +δ), p_tost_holm, verdict and seeds_needed:

    - "worse" / "better": p_holm < alpha, diff > 0 / < 0 (a difference shown, even one inside ±δ);
    - "equivalent": otherwise, p_tost_holm < alpha;
    - "undecided": neither, or fewer than 2 differences (no test: p NaN).

    seeds_needed: for an undecided comparison, `seeds_needed` planned from its diff and sd at
    alpha / m (m: the comparisons with a test), power `power`; inf when no number of seeds
    would decide it; NaN when decided, or with fewer than 2 differences to plan from.
    All computed with statsmodels (`DescrStatsW`, `multipletests`, `TTestPower`).
    """
    rows = {}
    for label, values in differences.items():
        d = np.asarray(values, dtype=float).ravel()
        d = d[~np.isnan(d)]
        n = len(d)
        p, p_tost = _paired_p_values(d, margin) if n >= 2 else (math.nan, math.nan)
        rows[label] = {
            "n": n, "diff": d.mean() if n else math.nan, "sd": d.std(ddof=1) if n >= 2 else math.nan, "p": p, "p_tost": p_tost,
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["n", "diff", "sd", "p", "p_tost"])
    table["n"] = table["n"].astype(int)
    table["p_holm"] = holm(table["p"])
    table["p_tost_holm"] = holm(table["p_tost"])
    table["verdict"] = [
        (WORSE if diff > 0 else BETTER) if p < alpha else EQUIVALENT if p_tost < alpha else UNDECIDED
        for diff, p, p_tost in zip(table["diff"], table["p_holm"], table["p_tost_holm"])
    ]
    family = int(table["p"].notna().sum())
    table["seeds_needed"] = [
        seeds_needed(row.diff, row.sd, margin, row.n, alpha, power, family) if row.verdict == UNDECIDED else math.nan
        for row in table.itertuples()
    ]
    return table[VERDICT_COLUMNS]


def verdict_summary(table: pd.DataFrame, margin: float, alpha: float = ALPHA) -> str:
    """One line counting the verdicts of a table with `verdict` and `seeds_needed` columns
    (`verdicts`, `variant_table`, `factor_table`; rows without a verdict, a baseline, left out),
    e.g. "Verdicts at margin ±0.1 pp, Holm-adjusted α = 0.05: 3 worse, 2 equivalent,
    2 undecided (need 12 and 13 seeds)."."""
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
            details.append(f"no number of seeds decides {never}: {'its' if never == 1 else 'their'} difference sits at the margin")
        if (untested := int(needed.isna().sum())):
            details.append(f"{untested} with under 2 paired seeds")
        parts[-1] += f" ({'; '.join(details)})"
    return f"Verdicts at margin ±{margin:g} pp, Holm-adjusted α = {alpha:g}: {', '.join(parts) or 'no comparisons'}."


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
    (seeds shared with the baseline, 0 on its own row), then the verdict against the baseline
    from the paired differences on those seeds (`verdicts`, the tested variants one family):
    p (paired t-test, NaN below 2 pairs), p_holm, p_tost, p_tost_holm, verdict ("" on the
    baseline's row), seeds_needed; best (lowest mean), baseline, margin (δ, points).
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
    for column in _VERDICT_FIELDS:
        table[column] = judged[column].to_numpy()
    table["verdict"] = table["verdict"].fillna("")
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
    are grouped by (factor, from, to), oriented from the paper's choice; effect is the mean
    of the per-seed differences to - from (percentage points of test error, negative = the
    change helps), with a 95% t interval over those differences (NaN for a single one).
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
    rows = [_effect_row(*key, found) | judged.loc[str(i), _VERDICT_FIELDS].to_dict() for i, (key, found) in enumerate(groups.items())]
    table = pd.DataFrame(rows, columns=FACTOR_COLUMNS).assign(margin=margin)
    rank = {factor: index for index, factor in enumerate(FACTORS)}
    sort_key = table["factor"].str.split("+").str[0].map(rank) * 2 + (table["flag"] != "")
    return table.iloc[np.argsort(sort_key.to_numpy(), kind="stable")].reset_index(drop=True)


def _effect_row(factor: str, change: str, flag: str, differences: list[pd.Series]) -> dict:
    pooled = pd.concat(differences)
    ci_low, ci_high = t_interval(pooled)
    return {
        "factor": factor, "change": change, "effect": pooled.mean(), "ci_low": ci_low, "ci_high": ci_high,
        "n_pairs": len(differences), "n": len(pooled), "flag": flag,
    }
