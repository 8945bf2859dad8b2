"""The report of a fair study (lenet5.study): the finals' tables as `analysis.report` writes
them, the learning rate each variant got with the budget spent finding it, and the tuning plot.

Files (in `out`): study.md (one row per variant: the finals' test error and verdict against
the baseline beside the selected rate, its validation error, the range, an edge flag and the
budget; below it the line counting the verdicts, at the margin it states), tuning.{md,csv},
tuning_trials.csv (every tuning run), tuning.png, and everything `analysis.report` writes for
the finals (variants.*, factors.*, runs.csv, the figures), captioned as a tuned recipe.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import plots
from .report import BEST_MARK, RECIPE_NOTES, TUNED_PARAMS, markdown_table, variants_display, write_tables
from .runs import ReportError, load_runs, training_passes, training_time_of
from .stats import default_margin, variant_table, verdict_summary
from .tuning import selection_display, tuning_figure

def write_study_report(
    tracking_uri: str,
    experiment: str,
    out_dir: str | Path,
    trials: pd.DataFrame,
    selection: pd.DataFrame,
    finals: dict[str, str],
    scope: str,
    baseline: str | None = None,
    margin: float | None = None,
) -> dict[str, Path]:
    """Write the study's report into `out_dir`; returns {file name: path}.

    `trials` and `selection`: analysis.tuning's frames; `finals`: {final run id: the study's
    label of its variant} (the labels of `trials`); `margin`: the equivalence margin of the
    verdicts, points of test error (None: the dataset's, `analysis.stats.MARGINS`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    tuning = selection_display(selection)
    (out / "tuning.md").write_text(markdown_table(tuning) + "\n", encoding="utf-8")
    selection.to_csv(out / "tuning.csv", index=False)
    trials.to_csv(out / "tuning_trials.csv", index=False)
    files |= {name: out / name for name in ("tuning.md", "tuning.csv", "tuning_trials.csv")}
    files["tuning.png"] = plots.save(tuning_figure(trials, selection), out / "tuning.png")
    if not finals:
        return files
    runs = load_runs(tracking_uri, experiment)
    runs = runs[runs["run_id"].isin(finals)].copy()
    if runs.empty:
        raise ReportError(f"none of the {len(finals)} final runs of {scope} is FINISHED in experiment '{experiment}'")
    runs["variant"] = runs["run_id"].map(finals)
    # Rows in the study's order (a path's steps in sequence), not in the order the finals
    # happened to start: two launches of a study, or a resumed one, interleave them.
    study_order = {label: rank for rank, label in enumerate(selection["variant"])}  # one row a variant
    runs = runs.sort_values("variant", key=lambda labels: labels.map(study_order), kind="stable")
    margin = default_margin(runs) if margin is None else margin
    files |= write_tables(runs, tracking_uri, out, scope, baseline, tuned=TUNED_PARAMS, margin=margin)
    variants = variant_table(runs, baseline, margin)
    shown = variants_display(variants)
    shown["key"] = shown["variant"].str.removesuffix(f" {BEST_MARK}")
    combined = shown.merge(tuning.drop(columns="optimizer"), left_on="key", right_on="variant", how="left", suffixes=("", "_tuning"))
    combined = combined.drop(columns=["key", "variant_tuning"])
    (out / "study.md").write_text(
        markdown_table(combined)
        + f"\n\n{verdict_summary(variants, margin)}\n\n{RECIPE_NOTES['tuned']} {finals_note(runs)}\n\n"
        + f"{compute_note(tracking_uri, trials, finals)}\n",
        encoding="utf-8",
    )
    files["study.md"] = out / "study.md"
    return files


def finals_note(runs: pd.DataFrame) -> str:
    """One sentence: the finals' protocol (seeds, passes, training images), read from their runs,
    so a study trained on a smaller budget says so in its own table."""
    seeds = ", ".join(str(s) for s in sorted(runs["seed"].astype(int).unique()))
    passes = " or ".join(str(p) for p in sorted(runs["trainer.max_epochs"].astype(int).unique()))
    subsets = sorted(runs["data.train_subset"].astype(int).unique())
    images = " or ".join(f"{n:,}" if n else "all 60,000" for n in subsets)
    return f"Finals: seeds {seeds}; passes: {passes}, over {images} training images; test error after the last pass."


def compute_note(tracking_uri: str, trials: pd.DataFrame, finals: dict[str, str]) -> str:
    """One line: the training time of the study's tuning runs and finals (`runs.training_time_of`)."""
    passes = training_passes(tracking_uri, [*trials["run_id"].dropna(), *finals])
    both = training_time_of(passes)
    tuning = training_time_of(passes[~passes["run_id"].isin(finals)])
    final = training_time_of(passes[passes["run_id"].isin(finals)])
    return (
        f"Compute: {_duration(both['core_s'])} of training passes in all (tuning {_duration(tuning['core_s'])}, "
        f"finals {_duration(final['core_s'])}; process time, a stack's pass counted once, evaluation and logging "
        f"left out), during {_duration(both['wall_s'])} of wall clock in which some run of the study was training."
    )


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
