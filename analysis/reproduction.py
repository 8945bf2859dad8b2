"""Reproduction of the published numbers, side by side: runs each system over several seeds
(as ordinary sweeps, so finished runs are reused) and writes `results/reproduction.md`.

    python -m analysis.reproduction [--experiment reproduction] [--paper-seeds 5] [--seeds 3]
                                    [--systems paper,modern] [--out results/] [-- OVERRIDES...]

Everything after `--` is passed to every run (e.g. `-- data.train_subset=2000 trainer.max_epochs=2`
for a quick look; the committed table uses none).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lenet5.config import PROJECT_DIR

from . import plots
from .runs import DEFAULT_TRACKING_URI, ReportError, load_curves, load_runs


@dataclass(frozen=True)
class Published:
    """What a source reports for one system (errors in %), and where it comes from."""

    test_error: float | None
    train_error: float | None = None
    train_error_epoch: int | None = None
    source: str = ""


#: From ../shared/reference/lenet5-paper.md (accuracies turned into errors).
PUBLISHED = {
    "paper": Published(0.95, 0.35, 19, "LeCun et al. 1998, Fig. 5 / section III"),
    "paper_distortions": Published(0.8, None, None, "LeCun et al. 1998, section III"),
    "seed001_tutorial": Published(100 - 98.46, 100 - 99.65, 50, "articles/001 (PyTorch tutorial)"),
    "seed004_tf": Published(None, None, None, "articles/004 (TF tutorial): nothing published"),
    "modern": Published(None, None, None, "this suite's reference point for the ablation"),
}
SYSTEMS = tuple(PUBLISHED)


def run_systems(systems: list[str], seeds: dict[str, int], experiment: str, overrides: list[str]) -> None:
    """One sweep per system over its seeds, through run.py (finished runs are skipped)."""
    for system in systems:
        seed_list = ",".join(str(s) for s in range(seeds[system]))
        command = [sys.executable, str(PROJECT_DIR / "run.py"), "-m", f"experiment={system}", f"seed={seed_list}",
                   f"tracking.experiment={experiment}", "trainer.progress_bar=false", *overrides]  # fmt: skip
        print("+", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)


def _final(curves: pd.DataFrame, metric: str, step: int | None) -> pd.Series:
    """Per run: the metric at `step` (or the last one when None)."""
    picked = curves[curves["metric"] == metric]
    if step is not None:
        picked = picked[picked["step"] == step]
    return picked.sort_values("step").groupby("run_id")["value"].last()


def reproduction_table(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per system: published test error, the suite's mean +- std over seeds, n, difference;
    and the same for the training error where a figure was published."""
    rows = []
    for system, published in PUBLISHED.items():
        mine = runs[(runs["experiment"] == system) & (runs["delta"] == "none")]
        if mine.empty:
            continue
        test = mine["test_error"]
        train = _final(curves[curves["run_id"].isin(mine["run_id"])], "train_error", published.train_error_epoch)
        rows.append(
            {
                "system": system,
                "published test error %": published.test_error,
                "suite test error %": test.mean(),
                "std": test.std(ddof=1) if len(test) > 1 else math.nan,
                "n": len(test),
                "difference (pp)": test.mean() - published.test_error if published.test_error is not None else math.nan,
                "published train error %": published.train_error,
                "suite train error %": train.mean() if len(train) else math.nan,
                "train error at epoch": published.train_error_epoch or int(mine["trainer.max_epochs"].astype(int).max()),
                "source": published.source,
            }
        )
    return pd.DataFrame(rows)


def _cell(value, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def markdown(table: pd.DataFrame, experiment: str, tracking_uri: str, overrides: list[str]) -> str:
    shown = pd.DataFrame(
        {
            "system": table["system"],
            "published test error %": [_cell(v) for v in table["published test error %"]],
            "suite test error % (mean ± std)": [
                f"{m:.2f} ± {s:.2f}" if not math.isnan(s) else f"{m:.2f}" for m, s in zip(table["suite test error %"], table["std"])
            ],
            "n": table["n"],
            "Δ (pp)": [_cell(v, signed=True) for v in table["difference (pp)"]],
            "published train error %": [_cell(v) for v in table["published train error %"]],
            "suite train error %": [_cell(v) for v in table["suite train error %"]],
            "at epoch": table["train error at epoch"],
            "source": table["source"],
        }
    )
    lines = [
        "# Reproduction of the published LeNet-5 results",
        "",
        f"Generated by `python -m analysis.reproduction` from MLflow experiment `{experiment}` ({tracking_uri}).",
        "Test errors are final (after the last epoch); the suite's training error is the running error over that epoch.",
    ]
    if overrides:
        lines.append(f"Every run also had: `{' '.join(overrides)}` (not the published recipe).")
    return "\n".join([*lines, "", shown.to_markdown(index=False, disable_numparse=True), ""])


def fig5_curves(runs: pd.DataFrame, curves: pd.DataFrame):
    """Like the paper's Fig. 5: training and test error against passes for `paper`, mean over seeds."""
    paper = runs[(runs["experiment"] == "paper") & (runs["delta"] == "none")]
    if paper.empty:
        return None
    figure = plots.learning_curves_figure(curves, paper, metrics=("train_error", "test_error"))
    figure.axes[0].set_xlabel("training passes")
    return figure


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m analysis.reproduction", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="reproduction")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--paper-seeds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "results")
    parser.add_argument("--no-train", action="store_true", help="only rebuild the table from the runs in the store")
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in PUBLISHED]
    if unknown:
        print(f"error: unknown system {unknown[0]}; valid: {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    if not args.no_train:
        seeds = {s: args.paper_seeds if s == "paper" else args.seeds for s in systems}
        run_systems(systems, seeds, args.experiment, [f"tracking.uri={args.tracking_uri}", *overrides])
    try:
        runs = load_runs(args.tracking_uri, args.experiment)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = runs[runs["experiment"].isin(systems)]
    curves = load_curves(args.tracking_uri, runs["run_id"], metrics=("test_error", "train_error"))
    table = reproduction_table(runs, curves)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, args.experiment, args.tracking_uri, overrides)
    (args.out / "reproduction.md").write_text(text)
    table.to_csv(args.out / "reproduction.csv", index=False)
    figure = fig5_curves(runs, curves)
    if figure is not None:
        plots.save(figure, args.out / "fig5_paper_error_vs_passes.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
