"""A fair study's tuning stage as tables and a figure: which learning rate each variant got.

Input is the trials frame `lenet5.study` builds from MLflow, one row per tuning run (variant,
learning rate, seed): columns variant, optim, lr (float), seed, status (`finished`,
`diverged`: the run FAILED with a non-finite loss, a result of its rate; `missing`: no such
run ended), val_error (%, the last pass's; NaN unless finished), run_id, and the budget:
low, high (the optimizer's range), passes, train_images; and round (`grid`, or `refine` for
the midpoints tried around the grid's selection; absent in studies from before refinement).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

#: Columns of `select_rates`' frame.
SELECTION_COLUMNS = [
    "variant", "optim", "selected_lr", "val_error", "low", "high", "at_edge", "trials", "passes", "seeds",
    "budget_passes", "train_images", "diverged", "selected_run_ids", "grid_lr", "grid_val_error", "refined",
]  # fmt: skip


def rate_errors(trials: pd.DataFrame) -> pd.DataFrame:
    """Per variant and rate: mean val_error over the tuning seeds (inf when any seed diverged,
    NaN when any is missing), n seeds. Columns variant, optim, lr, val_error, n, run_ids."""
    scored = trials.assign(score=trials["val_error"].where(trials["status"] != "diverged", math.inf))
    scored.loc[scored["status"] == "missing", "score"] = math.nan
    grouped = scored.groupby(["variant", "optim", "lr"], sort=False)
    return grouped.agg(
        val_error=("score", lambda s: s.mean(skipna=False)), n=("seed", "size"), run_ids=("run_id", lambda r: ",".join(r.dropna()))
    ).reset_index()


def select_rates(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per variant whose every trial ended: the rate of lowest mean validation error
    (ties: the smaller rate), flagged `at_edge` ("low"/"high", "" inside) when it is an end
    of the range, with the budget spent (trials x passes x seeds). Variants with a missing
    trial, or whose every rate diverged, are left out (see `unresolved`)."""
    rows = []
    errors = rate_errors(trials)
    grid = trials[trials["round"] == "grid"] if "round" in trials else trials
    grid_errors = rate_errors(grid).sort_values("lr", kind="stable")
    for variant, mine in errors.groupby("variant", sort=False):
        own = trials[trials["variant"] == variant]
        if mine["val_error"].isna().any() or np.isinf(mine["val_error"]).all():
            continue
        mine = mine.sort_values("lr")
        best = mine.loc[mine["val_error"].idxmin()]  # first minimum in rate order: the smaller rate
        low, high = own["low"].iloc[0], own["high"].iloc[0]
        edge = "low" if best["lr"] == mine["lr"].iloc[0] else "high" if best["lr"] == mine["lr"].iloc[-1] else ""
        seeds = own["seed"].nunique()
        own_grid = grid_errors[grid_errors["variant"] == variant]
        grid_best = own_grid.loc[own_grid["val_error"].idxmin()]  # what the grid alone would select
        rows.append(
            {
                "variant": variant, "optim": best["optim"], "selected_lr": best["lr"], "val_error": best["val_error"],
                "low": low, "high": high, "at_edge": edge, "trials": len(mine), "passes": int(own["passes"].iloc[0]),
                "seeds": seeds, "budget_passes": len(mine) * int(own["passes"].iloc[0]) * seeds,
                "train_images": int(own["train_images"].iloc[0]), "diverged": int((own["status"] == "diverged").sum()),
                "selected_run_ids": best["run_ids"], "grid_lr": grid_best["lr"], "grid_val_error": grid_best["val_error"],
                "refined": bool(len(own) > len(grid[grid["variant"] == variant])),
            }
        )  # fmt: skip
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def unresolved(trials: pd.DataFrame) -> dict[str, str]:
    """{variant: why no rate could be selected} for the variants `select_rates` leaves out."""
    why = {}
    for variant, own in trials.groupby("variant", sort=False):
        missing = own[own["status"] == "missing"]
        if len(missing):
            rates = ", ".join(f"{lr:g}" for lr in sorted(set(missing["lr"])))
            why[variant] = f"{len(missing)} tuning run(s) did not finish (lr {rates}); run the command again"
        elif (own["status"] == "diverged").all():
            why[variant] = f"every learning rate diverged; move study.tune.lr_range.{own['optim'].iloc[0]} lower"
    return why


def refinement_note(selection_row: pd.Series) -> str:
    """Whether refining the grid moved a variant's selection, and what it gained in validation
    error: "kept" or "moved from 0.000158 (1.26 %): -0.05 pp"."""
    if selection_row["selected_lr"] == selection_row["grid_lr"]:
        return "kept"
    gain = selection_row["val_error"] - selection_row["grid_val_error"]
    return f"moved from {selection_row['grid_lr']:.3g} ({selection_row['grid_val_error']:.2f} %): {gain:+.2f} pp"


def selection_display(selection: pd.DataFrame) -> pd.DataFrame:
    """`select_rates` as text: the tuning columns of a study's report, with a column saying
    what refinement changed when the search was refined."""
    shown = pd.DataFrame(
        {
            "variant": selection["variant"],
            "optimizer": selection["optim"],
            "selected lr": [f"{lr:.3g}" for lr in selection["selected_lr"]],
            "val error %": [f"{v:.2f}" for v in selection["val_error"]],
            "lr range": [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(selection["low"], selection["high"])],
            "edge": [f"at {edge} end: widen the range" if edge else "" for edge in selection["at_edge"]],
            "tuning budget": [
                f"{t} lr x {p} passes x {s} seed{'s' * (s > 1)} = {b} passes of {n:,} images"
                for t, p, s, b, n in selection[["trials", "passes", "seeds", "budget_passes", "train_images"]].itertuples(index=False)
            ],
            "diverged": selection["diverged"],
        }
    )
    if selection["refined"].any():
        shown.insert(4, "refinement", [refinement_note(row) for _, row in selection.iterrows()])
    return shown


#: Characters per line of a panel title (a 4.2-inch panel at fontsize "small").
TITLE_WIDTH = 55


def tuning_figure(trials: pd.DataFrame, selection: pd.DataFrame) -> Figure:
    """Validation error (%) against learning rate, one panel per variant, log x axis; the y
    axis is logarithmic where the errors span more than a factor of 10. Each seed is a point,
    the mean a line; the selected rate a star; diverged runs an x on the top edge; the range's
    ends dotted."""
    variants = list(dict.fromkeys(trials["variant"]))
    columns = min(len(variants), 3)
    rows = math.ceil(len(variants) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    errors = rate_errors(trials)
    chosen = selection.set_index("variant")
    for ax, variant in zip(axes, variants):
        own = trials[trials["variant"] == variant]
        done = own[own["status"] == "finished"]
        mean = errors[(errors["variant"] == variant) & np.isfinite(errors["val_error"])].sort_values("lr")
        refined = done["round"] == "refine" if "round" in done else pd.Series(False, index=done.index)
        ax.plot(done["lr"][~refined], done["val_error"][~refined], "o", color="tab:gray", alpha=0.6, label="one seed")
        if refined.any():
            ax.plot(done["lr"][refined], done["val_error"][refined], "D", color="tab:orange", alpha=0.8, label="refinement")
        ax.plot(mean["lr"], mean["val_error"], "-", color="tab:blue", label="mean over seeds")
        finite = done["val_error"]
        if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 10:
            ax.set_yscale("log")
        ax.set_xscale("log")
        diverged = own[own["status"] == "diverged"]
        if len(diverged):
            ax.plot(diverged["lr"], [1.0] * len(diverged), "x", color="tab:red", transform=ax.get_xaxis_transform(),
                    clip_on=False, label="diverged")  # fmt: skip
        for end in (own["low"].iloc[0], own["high"].iloc[0]):
            ax.axvline(end, color="black", linestyle=":", linewidth=0.8)
        if variant in chosen.index:
            pick = chosen.loc[variant]
            ax.plot([pick["selected_lr"]], [pick["val_error"]], "*", color="tab:green", markersize=14,
                    label=f"selected {pick['selected_lr']:.3g}" + (f" (at {pick['at_edge']} end)" if pick["at_edge"] else ""))  # fmt: skip
        # A path step's label runs to ~100 characters: unwrapped, neighbouring titles overprint.
        ax.set_title(textwrap.fill(f"{variant} ({own['optim'].iloc[0]})", TITLE_WIDTH), fontsize="small")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation error (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    for ax in axes[len(variants) :]:
        ax.set_visible(False)
    return figure
