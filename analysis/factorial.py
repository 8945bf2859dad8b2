"""The tables of a factorial study: variants that are the cells of a grid of factors (the card's
pool x activation x head, `sweep=pool_act_head`), analysed as paired contrasts by seed.

Every contrast is a per-seed number built from the cells' test errors on that seed, so each is
paired by seed and decided by the signed-rank rule (`analysis.stats.verdicts`, docs/studies.md#verdicts):

- a **main effect** of a factor's level against the paper's (its first choice): the level's
  effect averaged over every combination of the other factors' levels;
- a **two-way interaction** of two factors' levels: the first factor's effect at the second's level
  minus its effect at the second's paper level, averaged over the remaining factors (e.g.
  max-pooling's effect under ReLU minus its effect under the scaled tanh);
- the **three-way interaction**: a two-way interaction at the third factor's level minus it at the
  third's paper level;
- a **simple effect**: one factor's level against the paper's at one combination of the others'
  levels ("max-pooling with ReLU and softmax").

Main effects and simple effects are judged at the study's margin δ; interactions at `2 δ`, since a
2 x 2 interaction contrast, a difference of two differences, spreads about twice as much as the
effect it compares, and an interaction within ±2δ means a factor's effect at one level of the other
lies within ±2δ of its effect at the paper's level. The three kinds are three Holm families. Beside
them, the conventional summary: an ordinary least-squares model of test error on the factors, all
their interactions and the seed as a block (statsmodels' `ols` and `anova_lm`).

Only the seeds every cell has (the balanced set) enter; a study that covers at least half of its
grid's cells but not all, or whose cells share fewer than 2 seeds, is an incomplete factorial and
says what is missing instead. A study whose variants cover less than half of the grid their
varying factors span (a path), or that never changes two factors together (one factor at a time),
is no factorial: `factorial_design` gives None.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .runs import FACTORS
from .stats import ALPHA, CHOICE_ORDER, STALL_ERROR, UNDECIDED, t_interval, verdicts

#: Verdict words of an interaction: a difference shown is an interaction present.
PRESENT, ABSENT = "present", "absent"
#: An interaction's margin, as a multiple of the study's δ (see the module's docstring).
INTERACTION_MARGIN_FACTOR = 2.0
CONTRAST_COLUMNS = [
    "kind", "contrast", "n", "estimate", "ci_low", "ci_high", "mean", "p", "p_holm", "p_tost", "p_tost_holm", "verdict",
    "seeds_needed", "verdict_t", "margin",
]  # fmt: skip


@dataclass
class Design:
    """A grid of `factors` (names of `load_runs`' factor columns), each with its `levels` (the
    paper's first); `cells` maps each level combination present to its variant label."""

    factors: list[str]
    levels: dict[str, list[str]]
    cells: dict[tuple[str, ...], str]
    seeds: dict[str, list[int]] = field(default_factory=dict)  # each variant's seeds

    @property
    def grid(self) -> list[tuple[str, ...]]:
        return list(itertools.product(*(self.levels[f] for f in self.factors)))

    @property
    def missing_cells(self) -> list[tuple[str, ...]]:
        return [cell for cell in self.grid if cell not in self.cells]

    @property
    def balanced_seeds(self) -> list[int]:
        sets = [set(self.seeds[label]) for label in self.cells.values()]
        return sorted(set.intersection(*sets)) if sets else []

    @property
    def complete(self) -> bool:
        return not self.missing_cells and len(self.balanced_seeds) >= 2

    def describe_missing(self) -> str:
        """One line naming what keeps this factorial from being analysed."""
        parts = []
        if self.missing_cells:
            cells = "; ".join(", ".join(f"{f}={v}" for f, v in zip(self.factors, cell)) for cell in self.missing_cells)
            parts.append(f"{len(self.missing_cells)} of its {len(self.grid)} cells have no finished final ({cells})")
        if len(self.balanced_seeds) < 2:
            parts.append(f"its cells share {len(self.balanced_seeds)} seed(s), and a paired contrast needs 2")
        return "Incomplete factorial: " + " and ".join(parts) + "; no factorial contrast is reported."


def _one_to_one(runs: pd.DataFrame, a: str, b: str) -> bool:
    pairs = runs[[a, b]].astype(str).drop_duplicates()
    return pairs[a].is_unique and pairs[b].is_unique


def factorial_design(runs: pd.DataFrame) -> Design | None:
    """The grid `runs`' variants form, or None when they form none: the factors whose choice
    varies between variants (a factor that only follows another, as the loss follows the head,
    belongs to it), at least 2 of them, the variants covering at least half of the grid's cells,
    each variant one cell, and at least one cell changing two factors from the paper's choices
    (so that one factor at a time, which never does, is no factorial)."""
    variants = runs.drop_duplicates("variant").set_index("variant")
    varying = [f for f in FACTORS if f in variants and variants[f].astype(str).nunique() > 1]
    factors = [f for i, f in enumerate(varying) if not any(_one_to_one(variants, g, f) for g in varying[:i])]
    if len(factors) < 2:
        return None
    levels = {}
    for f in factors:
        present = list(dict.fromkeys(variants[f].astype(str)))
        order = CHOICE_ORDER.get(f, [])
        levels[f] = sorted(present, key=lambda v: order.index(v) if v in order else len(order))
    cells: dict[tuple[str, ...], str] = {}
    for label, row in variants.iterrows():
        cell = tuple(str(row[f]) for f in factors)
        if cell in cells:
            return None  # two variants in one cell: they differ in something else, no grid of these factors
        cells[cell] = str(label)
    design = Design(factors, levels, cells, {v: sorted(runs.loc[runs["variant"] == v, "seed"].astype(int).unique()) for v in cells.values()})
    # One factor at a time covers 3 of a 2 x 2 grid's cells, but never crosses two changes.
    crossed = any(sum(value != levels[f][0] for f, value in zip(factors, cell)) >= 2 for cell in cells)
    return design if crossed and 2 * len(cells) >= len(design.grid) else None


def cell_errors(runs: pd.DataFrame, design: Design) -> np.ndarray:
    """(seeds, levels of factor 1, levels of factor 2, ...) test errors (%) on the balanced seeds;
    several runs of one variant and seed count once, as their mean."""
    seeds = design.balanced_seeds
    by_seed = runs.pivot_table(index="variant", columns="seed", values="test_error", aggfunc="mean")
    shape = [len(seeds), *(len(design.levels[f]) for f in design.factors)]
    errors = np.full(shape, np.nan)
    for cell, label in design.cells.items():
        index = tuple(design.levels[f].index(v) for f, v in zip(design.factors, cell))
        errors[(slice(None), *index)] = by_seed.loc[label, seeds].to_numpy()
    return errors


def _contrast(errors: np.ndarray, changed: dict[int, int]) -> np.ndarray:
    """The per-seed interaction contrast of the factor axes in `changed` ({axis: level}; one axis:
    a main effect): the signed sum over every corner of those axes (level or paper level), with
    -1 for each axis at its paper level, averaged over the axes not changed."""
    total = np.zeros(errors.shape[0])
    axes = list(changed)
    for picks in itertools.product((0, 1), repeat=len(axes)):
        index = [slice(None)] * errors.ndim
        sign = 1
        for axis, pick in zip(axes, picks):
            index[axis + 1] = changed[axis] if pick else 0
            sign *= 1 if pick else -1
        total = total + sign * errors[tuple(index)].reshape(errors.shape[0], -1).mean(axis=1)
    return total


def contrasts(runs: pd.DataFrame, design: Design, margin: float) -> dict[str, pd.DataFrame]:
    """{"main", "interactions", "simple"}: each a table of `CONTRAST_COLUMNS`, one row per
    contrast, judged as one Holm family under the signed-rank rule (interactions at
    INTERACTION_MARGIN_FACTOR x margin, their verdicts "present", "absent" or "undecided")."""
    errors = cell_errors(runs, design)
    factors, levels = design.factors, design.levels
    main, interactions, simple = {}, {}, {}
    for axis, f in enumerate(factors):
        for level in range(1, len(levels[f])):
            main[f"{f}: {levels[f][0]} → {levels[f][level]}"] = _contrast(errors, {axis: level})
    for size in range(2, len(factors) + 1):
        for axes in itertools.combinations(range(len(factors)), size):
            for chosen in itertools.product(*(range(1, len(levels[factors[a]])) for a in axes)):
                name = " × ".join(f"{factors[a]} {levels[factors[a]][0]} → {levels[factors[a]][c]}" for a, c in zip(axes, chosen))
                interactions[name] = _contrast(errors, dict(zip(axes, chosen)))
    for axis, f in enumerate(factors):
        others = [a for a in range(len(factors)) if a != axis]
        for level in range(1, len(levels[f])):
            for at in itertools.product(*(range(len(levels[factors[a]])) for a in others)):
                index = [slice(None)] * errors.ndim
                for a, value in zip(others, at):
                    index[a + 1] = value
                base, changed = list(index), list(index)
                base[axis + 1], changed[axis + 1] = 0, level
                where = ", ".join(f"{factors[a]}={levels[factors[a]][v]}" for a, v in zip(others, at))
                simple[f"{f}: {levels[f][0]} → {levels[f][level]} at {where}"] = errors[tuple(changed)] - errors[tuple(base)]
    return {
        "main": _judged("main effect", main, margin),
        "interactions": _judged("interaction", interactions, INTERACTION_MARGIN_FACTOR * margin, words=(PRESENT, ABSENT)),
        "simple": _judged("simple effect", simple, margin),
    }


def _judged(kind: str, found: dict[str, np.ndarray], margin: float, words: tuple[str, str] | None = None) -> pd.DataFrame:
    table = verdicts(found, margin)
    if words is not None:
        shown, same = words
        rename = {"worse": shown, "better": shown, "equivalent": same}
        table["verdict"] = table["verdict"].replace(rename)
        table["verdict_t"] = table["verdict_t"].replace(rename)
    table = table.rename(columns={"diff": "estimate", "mean_diff": "mean"})
    table.insert(0, "contrast", table.index)
    table.insert(0, "kind", kind)
    table["margin"] = margin
    return table.reset_index(drop=True)[CONTRAST_COLUMNS]


def anova(runs: pd.DataFrame, design: Design) -> pd.DataFrame:
    """The conventional summary: statsmodels' `ols` of test error on every factor, all their
    interactions and the seed as a block, over the balanced seeds, and its `anova_lm` (type II
    sums of squares; balanced, so type I gives the same), one row per term."""
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    cells = set(design.cells.values())
    data = runs[runs["variant"].isin(cells) & runs["seed"].isin(design.balanced_seeds)]
    data = data.groupby(["variant", "seed", *design.factors], as_index=False)["test_error"].mean()
    terms = " * ".join(f"C({f})" for f in design.factors)
    model = ols(f"test_error ~ {terms} + C(seed)", data=data).fit()
    table = anova_lm(model, typ=2).reset_index(names="term")
    return table.rename(columns={"sum_sq": "sum of squares", "PR(>F)": "p"})


def cell_table(runs: pd.DataFrame, design: Design) -> pd.DataFrame:
    """One row per cell: its levels, the balanced seeds' mean test error with a 95% t interval,
    its stalls on those seeds, and the seeds it has beyond them (reported, not analysed)."""
    errors, balanced = cell_errors(runs, design), design.balanced_seeds
    rows = []
    for cell, label in design.cells.items():
        index = tuple(design.levels[f].index(v) for f, v in zip(design.factors, cell))
        values = errors[(slice(None), *index)]
        low, high = t_interval(values)
        extra = [s for s in design.seeds[label] if s not in balanced]
        rows.append({
            **dict(zip(design.factors, cell)), "variant": label, "n": len(values), "mean": values.mean(), "ci_low": low,
            "ci_high": high, "stalls": int((values >= STALL_ERROR).sum()), "seeds beyond the balanced set": len(extra),
        })  # fmt: skip
    return pd.DataFrame(rows)


def factorial_figure(cells: pd.DataFrame, design: Design) -> Figure:
    """Mean test error (%) with its 95% interval per level of the second factor (x), one line per
    level of the third, one panel per level of the first: for the card, per activation, a line
    per head, a panel per pooling. Drawn from `cell_table`'s numbers."""
    first, second, *rest = design.factors
    third = rest[0] if rest else None
    panels = design.levels[first]
    figure = Figure(figsize=(4.5 * len(panels), 4.0), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    x = np.arange(len(design.levels[second]))
    for ax, panel in zip(axes, panels):
        shown = cells[cells[first] == panel]
        lines = design.levels[third] if third else [None]
        for offset, line in zip(np.linspace(-0.08, 0.08, len(lines)), lines):
            own = shown if line is None else shown[shown[third] == line]
            own = own.set_index(second).reindex(design.levels[second])
            error = np.vstack([own["mean"] - own["ci_low"], own["ci_high"] - own["mean"]])
            ax.errorbar(x + offset, own["mean"], yerr=error, marker="o", capsize=3, label=line if line else None)
        ax.set_xticks(x, design.levels[second])
        ax.set_title(f"{first} = {panel}")
        ax.set_xlabel(second)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test error (%), mean over seeds with 95% CI")
    if third:
        axes[-1].legend(title=third, fontsize="small")
    return figure


def summary(tables: dict[str, pd.DataFrame]) -> str:
    """One line a family: how many contrasts of each verdict."""
    parts = []
    for name, table in tables.items():
        counts = table["verdict"].value_counts()
        listed = ", ".join(f"{counts[v]} {v}" for v in counts.index)
        undecided = table.loc[table["verdict"] == UNDECIDED, "seeds_needed"]
        finite = sorted(int(s) for s in undecided if np.isfinite(s))
        plan = f" (the undecided need up to {finite[-1]} seeds)" if finite else ""
        parts.append(f"{name}: {listed}{plan}")
    margin = tables["main"]["margin"].iloc[0] if len(tables["main"]) else math.nan
    return f"Factorial verdicts (signed-rank rule, Holm-adjusted α = {ALPHA:g}, margin ±{margin:g} pp, interactions ±{INTERACTION_MARGIN_FACTOR * margin:g}): " + "; ".join(parts) + "."


def planned_seeds(pilot: pd.DataFrame, margin: float, min_seeds: int, max_seeds: int) -> tuple[int, pd.DataFrame]:
    """A factorial study's plan from its pilot (`load_runs`-like frame: variant, seed, test_error
    and the factor columns): every cell gets the same seeds, so the design stays balanced and every
    contrast paired; as many as the undecided main effect or two-way interaction that needs the
    most (`analysis.stats.seeds_needed` under the signed-rank rule, within its family), at least
    `min_seeds` and at most `max_seeds` (also where no n decides). Three-way interactions and simple
    effects are reported, not planned for. Returns (n, the main-effect and two-way rows with
    their pilot verdicts and seeds needed). Raises ValueError when the pilot is no complete factorial."""
    design = factorial_design(pilot)
    if design is None or not design.complete:
        raise ValueError(design.describe_missing() if design else "the pilot's variants form no factorial")
    tables = contrasts(pilot, design, margin)
    two_way = tables["interactions"]["contrast"].str.count(" × ") == 1
    planned = pd.concat([tables["main"], tables["interactions"][two_way.to_numpy()]], ignore_index=True)
    needed = planned.loc[planned["verdict"] == UNDECIDED, "seeds_needed"]
    most = float(needed.max()) if len(needed) else float(min_seeds)
    n = max_seeds if not np.isfinite(most) else int(min(max(most, min_seeds), max_seeds))
    return n, planned[["kind", "contrast", "n", "estimate", "verdict", "seeds_needed"]]
