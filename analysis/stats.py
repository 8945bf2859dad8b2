"""Results tables from `load_runs`' frame: per-variant test error and per-factor effects.

Seeds are the unit of replication. Several finished runs of one variant and seed (a re-run)
count once, as their mean, so that n is the number of seeds and pairing by seed is defined.
"""

from __future__ import annotations

import itertools
import math
import re
import typing
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from lenet5.config import ABLATION_FACTORS, Config

from .runs import FACTORS, ReportError, scientific_params

CONFIDENCE = 0.95
#: The `variant=` delta that leaves a preset as it is: preferred when a baseline filter matches several variants.
PRESET_AS_IS = "none"
#: The variant used as baseline when none is named: the paper preset with no delta.
DEFAULT_BASELINE = "paper"

VARIANT_COLUMNS = [
    "variant", "n", "mean", "std", "ci_low", "ci_high", "diff", "n_paired", "p", "p_holm", "best", "baseline",
]
FACTOR_COLUMNS = ["factor", "change", "effect", "ci_low", "ci_high", "n_pairs", "n", "flag"]


def holm(p_values: typing.Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of m p-values (NaN entries are left out of m and stay NaN).

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)),
    which controls the family-wise error rate at the nominal level.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running_max = 0.0
    for rank, index in enumerate(order):
        running_max = max(running_max, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running_max
    return adjusted


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


def variant_table(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """One row per variant, seeds pooled; test errors in %, differences in percentage points.

    Columns: variant, n (seeds), mean, std (sample, NaN for n=1), ci_low/ci_high (95%
    Student-t interval of the mean, NaN for n=1), diff (mean - baseline mean), n_paired
    (seeds shared with the baseline, 0 on its own row), p (paired t-test on those seeds, NaN below 2 pairs),
    p_holm (Holm-adjusted across the tested variants), best (lowest mean), baseline.
    `baseline`: see `select_baseline`; the baseline columns stay NaN when there is none.
    Rows: the baseline first, then variants in the order they were first run.
    """
    errors = seed_errors(runs)
    chosen = select_baseline(runs, baseline)
    order = _variants_in_order(runs)
    if chosen is not None:
        order.remove(chosen)
        order.insert(0, chosen)
    rows = []
    for variant in order:
        values = errors.loc[variant].dropna()
        ci_low, ci_high = t_interval(values)
        row = {
            "variant": variant, "n": len(values), "mean": values.mean(),
            "std": values.std(ddof=1) if len(values) > 1 else math.nan,
            "ci_low": ci_low, "ci_high": ci_high, "diff": math.nan, "n_paired": 0, "p": math.nan,
        }
        if chosen is not None:
            row["diff"] = row["mean"] - errors.loc[chosen].mean()
        if chosen is not None and variant != chosen:
            paired = errors.loc[[variant, chosen]].T.dropna()
            row["n_paired"] = len(paired)
            if len(paired) >= 2:
                row["p"] = stats.ttest_rel(paired[variant], paired[chosen]).pvalue
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"])
    table["best"] = table["mean"] == table["mean"].min()
    table["baseline"] = table["variant"] == chosen
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


def factor_table(runs: pd.DataFrame, tuned: tuple[str, ...] = ()) -> pd.DataFrame:
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
    table = pd.DataFrame([_effect_row(*key, found) for key, found in groups.items()], columns=FACTOR_COLUMNS)
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
