"""Figures of the results tables.

Each function returns a matplotlib Figure built without pyplot, so nothing depends on (or
changes) the process's backend or pyplot's figure list: PNGs are rendered by Agg, a
notebook shows the returned figure inline, and a training process calling the report at
the end of a sweep keeps its own pyplot state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

BEST_COLOUR, BASELINE_COLOUR, OTHER_COLOUR, FLAGGED_COLOUR = "tab:green", "tab:blue", "tab:gray", "tab:orange"


def _row_height(rows: int) -> float:
    """Figure height (inches) for `rows` labelled rows."""
    return 1.2 + 0.4 * max(rows, 1)


def _width_for(labels: list[str]) -> float:
    """Figure width (inches) that leaves the axes 4 inches beside the longest y label: a path
    step's ~110-character label in a fixed 8 inches collapsed the axes to nothing."""
    return max(8.0, 4.0 + 0.075 * max((len(label) for label in labels), default=0))


def _interval_bars(ax, centres: pd.Series, low: pd.Series, high: pd.Series, colours: list[str]) -> None:
    """Horizontal points at `centres` with bars from `low` to `high`; rows with a NaN bound get a point only."""
    positions = np.arange(len(centres))
    has_interval = (np.isfinite(low) & np.isfinite(high)).to_numpy()  # an unbounded interval (too few seeds): the point alone
    for y, centre, lo, hi, colour, bar in zip(positions, centres, low, high, colours, has_interval):
        xerr = [[centre - lo], [hi - centre]] if bar else None
        ax.errorbar(centre, y, xerr=xerr, fmt="o", color=colour, capsize=4)
    ax.set_yticks(positions)
    ax.invert_yaxis()


def variants_figure(table: pd.DataFrame) -> Figure:
    """Mean final test error (%) per variant with its 95% interval (`variant_table`'s frame);
    a variant with one seed is a bare point. Best in green, baseline in blue."""
    labels = [f"{variant} (n={n})" for variant, n in zip(table["variant"], table["n"])]
    figure = Figure(figsize=(_width_for(labels), _row_height(len(table))), layout="constrained")
    ax = figure.subplots()
    colours = [
        BEST_COLOUR if best else BASELINE_COLOUR if baseline else OTHER_COLOUR
        for best, baseline in zip(table["best"], table["baseline"])
    ]
    _interval_bars(ax, table["mean"], table["ci_low"], table["ci_high"], colours)
    ax.set_yticklabels(labels)
    ax.set_xlabel("test error (%), mean over seeds with 95% CI")
    ax.grid(axis="x", alpha=0.3)
    return figure


def factors_figure(table: pd.DataFrame) -> Figure:
    """Effect of each factor change on test error (percentage points, Hodges-Lehmann) with its
    95% interval (`factor_table`'s frame; an unbounded one not drawn); flagged (confounded) rows in orange. Left of 0: the change helps."""
    labels = [f"{factor}: {change}{' (flagged)' if flag else ''}" for factor, change, flag in table[["factor", "change", "flag"]].itertuples(index=False)]
    figure = Figure(figsize=(_width_for(labels), _row_height(len(table))), layout="constrained")
    ax = figure.subplots()
    ax.axvline(0, color="black", linewidth=0.8)
    if table.empty:
        ax.text(0.5, 0.5, "no pair of variants isolates a factor", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    else:
        colours = [FLAGGED_COLOUR if flag else BASELINE_COLOUR for flag in table["flag"]]
        _interval_bars(ax, table["effect"], table["ci_low"], table["ci_high"], colours)
        ax.set_yticklabels(labels)
    ax.set_xlabel("change in test error (percentage points)\nHodges-Lehmann estimate over paired seeds with 95% CI")
    ax.grid(axis="x", alpha=0.3)
    return figure


def learning_curves_figure(curves: pd.DataFrame, runs: pd.DataFrame, metrics: tuple[str, ...] = ("test_error",)) -> Figure:
    """Each metric per epoch, one line per variant (and metric, when several): the mean over
    its seeds, with a band from the lowest to the highest seed. `curves`: `load_curves`'
    frame; `runs`: `load_runs`' frame."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    points = runs[["run_id", "variant"]].merge(curves[curves["metric"].isin(metrics)], on="run_id")
    for (variant, metric), group in points.groupby(["variant", "metric"], sort=False):
        spread = group.groupby("step")["value"].agg(["mean", "min", "max"])
        label = variant if len(metrics) == 1 else f"{variant}: {metric.replace('_', ' ')}"
        (line,) = ax.plot(spread.index, spread["mean"], marker="o", label=label)
        ax.fill_between(spread.index, spread["min"], spread["max"], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    all_errors = all(metric.endswith("error") for metric in metrics)
    ax.set_ylabel("error (%)" if len(metrics) > 1 and all_errors else
                  f"{metrics[0].replace('_', ' ')} (%)" if all_errors else metrics[0].replace("_", " "))  # fmt: skip
    if not points.empty:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, points["step"].max() + 0.5)  # epochs are whole: no 0.96 ticks around a single one
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return figure


def save(figure: Figure, path: Path) -> Path:
    """Write `figure` to `path` as a PNG, grown to hold whatever sticks out of the figure (an
    axis label wider than axes that long variant names have squeezed)."""
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
