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
from functools import lru_cache
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from lenet5.config import PROJECT_DIR, Config
from lenet5.presets import compose_config

from . import plots
from .runs import DEFAULT_TRACKING_URI, ReportError, load_curves, load_runs


@dataclass(frozen=True)
class System:
    """One row of the table: a preset (and a variant of it), what a source published for it
    (errors in %), and the budget it runs with where the published recipe does not fit one
    session on a CPU (overrides, stated in the table)."""

    name: str
    experiment: str
    variant: str = "none"
    budget: tuple[str, ...] = ()
    test_error: float | None = None
    train_error: float | None = None
    train_error_epoch: int | None = None
    source: str = ""

    def runs(self, runs: pd.DataFrame) -> pd.DataFrame:
        """This row's finished runs: its preset and variant, trained with exactly its budget
        (a key that another row's budget changes must keep this row's value, so the full
        protocol and a reduced budget of the same preset never share runs)."""
        mine = runs[(runs["experiment"] == self.experiment) & (runs["delta"] == self.variant)]
        for key, value in _budget_values(self.experiment, self.variant, self.budget).items():
            # A run logged before `key` existed trained as its schema default does now.
            logged = mine.get(key, pd.Series(None, index=mine.index, dtype=object)).fillna(_schema_default(key))
            mine = mine[logged.astype(str) == value]
        if "variant_hash" in mine and "start_time" in mine and not mine.empty:
            # When a preset's recipe changed (e.g. `paper`'s SDLM options), the store holds runs of
            # both: the row is the newest recipe's, never a mix.
            newest = mine.sort_values("start_time")["variant_hash"].iloc[-1]
            mine = mine[mine["variant_hash"] == newest]
        return mine


#: From ../shared/reference/lenet5-paper.md (accuracies turned into errors).
SYSTEMS = (
    System("paper", "paper", test_error=0.95, train_error=0.35, train_error_epoch=19,
           source="LeCun et al. 1998, Fig. 5 / section III"),
    System("paper_distortions", "paper_distortions", test_error=0.8, source="LeCun et al. 1998, section III"),
    # The full protocol (20 passes over all 600,000 patterns) took 89 minutes for three seeds side
    # by side on 2 CPU cores; this budget keeps the 20 passes and their eta schedule, each a fresh
    # 60,000 of the 600,000 (as many updates as `paper`).
    System("paper_distortions_60k", "paper_distortions", budget=("data.patterns_per_pass=60000",), test_error=0.8,
           source="LeCun et al. 1998, section III"),
    # Not a published system: the paper's network and loss under a modern optimizer, which
    # separates what the architecture can reach from what the paper's training recipe reaches.
    System("paper_adam", "paper", variant="optim_adam", source="diagnostic: the paper preset with Adam (variant optim_adam)"),
    System("seed001_tutorial", "seed001_tutorial", test_error=100 - 98.46, train_error=100 - 99.65, train_error_epoch=50,
           source="articles/001 (PyTorch tutorial)"),
    System("seed004_tf", "seed004_tf", source="articles/004 (TF tutorial): nothing published; sigmoid before pooling"),
    System("seed004_tf_after_pool", "seed004_tf", variant="activation_after_pool",
           source="articles/004's question: the same with sigmoid after pooling"),
    System("modern", "modern", source="this suite's reference point for the ablation"),
)  # fmt: skip
BY_NAME = {system.name: system for system in SYSTEMS}
#: Config keys that some row's budget changes: every row is matched on all of them.
BUDGET_KEYS = tuple(sorted({override.split("=", 1)[0] for system in SYSTEMS for override in system.budget}))


@lru_cache(maxsize=None)
def _schema_default(key: str) -> str:
    return str(OmegaConf.select(OmegaConf.structured(Config), key))


@lru_cache(maxsize=None)
def _budget_values(experiment: str, variant: str, budget: tuple[str, ...]) -> dict[str, str]:
    """{key: value as logged} over BUDGET_KEYS for the config this row runs."""
    cfg = compose_config([f"experiment={experiment}", f"variant={variant}", *budget])
    return {key: str(OmegaConf.select(cfg, key)) for key in BUDGET_KEYS}


def run_systems(systems: list[System], seeds: dict[str, int], experiment: str, overrides: list[str]) -> None:
    """One sweep per system over its seeds, through run.py (finished runs are skipped)."""
    for system in systems:
        seed_list = ",".join(str(s) for s in range(seeds[system.name]))
        command = [sys.executable, str(PROJECT_DIR / "run.py"), "-m", f"experiment={system.experiment}",
                   f"variant={system.variant}", f"seed={seed_list}", f"tracking.experiment={experiment}",
                   "trainer.progress_bar=false", *system.budget, *overrides]  # fmt: skip
        print("+", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)


def _final(curves: pd.DataFrame, metric: str, step: int | None) -> pd.Series:
    """Per run: the metric at `step` (or the last one when None)."""
    picked = curves[curves["metric"] == metric]
    if step is not None:
        picked = picked[picked["step"] == step]
    return picked.sort_values("step").groupby("run_id")["value"].last()


def _recipe(runs: pd.DataFrame) -> str:
    """Optimizer, step, init (SDLM's steps depend on it), batch size and passes as the runs
    logged them (the first run's)."""
    run = runs.iloc[0]
    optimizer = f"{run['optim']} lr {run['optim.lr']}"
    if run["optim"] == "sdlm":
        gain = run.get("model.init_gain")
        init = run.get("init", "lecun") + (f" {gain}" if isinstance(gain, str) and gain not in ("None", "") else "")
        optimizer += f" mu {run['optim.mu']}, init {init}"
    return f"{optimizer}, batch {run['data.batch_size']}, {run['trainer.max_epochs']} passes"


def carry_over(table: pd.DataFrame, previous_csv: Path, systems) -> pd.DataFrame:
    """`table` plus, for each of `systems` with no runs in the store, its row from the table
    written before (`previous_csv`), marked in `from`: an MLflow store is local to a machine,
    so a regenerated table keeps the rows whose runs are elsewhere rather than losing them."""
    table = table.assign(**{"from": "this store"})
    if not previous_csv.is_file():
        return table
    previous = pd.read_csv(previous_csv)
    missing = [s.name for s in systems if s.name not in set(table["system"])]
    # A CSV stores an empty budget as an empty cell, which pandas reads back as NaN.
    kept = previous[previous["system"].isin(missing)].fillna({"budget": "", "source": ""}).assign(**{"from": "previous table"})
    order = {s.name: i for i, s in enumerate(systems)}
    merged = pd.concat([table, kept[[c for c in table.columns if c in kept.columns]]], ignore_index=True)
    return merged.sort_values("system", key=lambda names: names.map(order)).reset_index(drop=True)


def reproduction_table(runs: pd.DataFrame, curves: pd.DataFrame, systems=SYSTEMS) -> pd.DataFrame:
    """One row per system with runs: published test error, the suite's mean +- std over seeds,
    n, difference; the same for the training error where a figure was published; and the
    mean wall time of a run and of a training pass."""
    rows = []
    for system in systems:
        mine = system.runs(runs)
        if mine.empty:
            continue
        test = mine["test_error"]
        own_curves = curves[curves["run_id"].isin(mine["run_id"])]
        train = _final(own_curves, "train_error", system.train_error_epoch)
        pass_times = own_curves.loc[own_curves["metric"] == "epoch_time_s", "value"]
        wall = (mine["end_time"] - mine["start_time"]).dt.total_seconds()
        rows.append(
            {
                "system": system.name,
                "published test error %": system.test_error,
                "suite test error %": test.mean(),
                "std": test.std(ddof=1) if len(test) > 1 else math.nan,
                "n": len(test),
                "difference (pp)": test.mean() - system.test_error if system.test_error is not None else math.nan,
                "published train error %": system.train_error,
                "suite train error %": train.mean() if len(train) else math.nan,
                "train error at epoch": system.train_error_epoch or int(mine["trainer.max_epochs"].astype(int).max()),
                "wall time per run (min)": wall.mean() / 60,
                "time per pass (s)": pass_times.mean() if len(pass_times) else math.nan,
                "recipe": _recipe(mine),
                "budget": " ".join(system.budget),
                "source": system.source,
            }
        )
    return pd.DataFrame(rows)


def _cell(value, signed: bool = False, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


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
            "recipe (as logged)": table["recipe"],
            "min / run": [_cell(v, digits=1) for v in table["wall time per run (min)"]],
            "s / pass": [_cell(v, digits=1) for v in table["time per pass (s)"]],
            "budget (not the published recipe)": [f"`{b}`" if b else "" for b in table["budget"]],
            "source": table["source"],
            "runs from": table["from"] if "from" in table else "this store",
        }
    )
    lines = [
        "# Reproduction of the published LeNet-5 results",
        "",
        f"Generated by `python -m analysis.reproduction` from MLflow experiment `{experiment}` ({tracking_uri}).",
        "Test errors are final (after the last epoch); the suite's training error is the running error over that epoch.",
        "Times are wall clock as the runs recorded them (min / run includes evaluation and logging; s / pass is the",
        "training pass alone); several runs may have shared the machine. A row whose runs are not in this store",
        "is carried over from the table generated before (`runs from: previous table`).",
    ]
    if overrides:
        lines.append(f"Every run also had: `{' '.join(overrides)}` (not the published recipe).")
    return "\n".join([*lines, "", shown.to_markdown(index=False, disable_numparse=True), ""])


def fig5_curves(runs: pd.DataFrame, curves: pd.DataFrame):
    """Like the paper's Fig. 5: training and test error against passes for `paper`, mean over seeds."""
    paper = BY_NAME["paper"].runs(runs)
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
    parser.add_argument("--systems", default=",".join(BY_NAME), help="the systems to train (the table always lists every system)")
    parser.add_argument("--paper-seeds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "results")
    parser.add_argument("--no-train", action="store_true", help="only rebuild the table from the runs in the store")
    parser.add_argument("--drop-missing", action="store_true",
                        help="leave out systems with no runs in the store (default: keep their rows from the previous table)")
    args = parser.parse_args(argv)
    names = [s for s in args.systems.split(",") if s]
    unknown = [s for s in names if s not in BY_NAME]
    if unknown:
        print(f"error: unknown system {unknown[0]}; valid: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    systems = [BY_NAME[name] for name in names]
    if not args.no_train:
        seeds = {s: args.paper_seeds if s == "paper" else args.seeds for s in names}
        run_systems(systems, seeds, args.experiment, [f"tracking.uri={args.tracking_uri}", *overrides])
    try:
        runs = load_runs(args.tracking_uri, args.experiment)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # --systems picks what to train; the table always covers every system, so rebuilding it
    # after training a few never drops the rows of the others.
    runs = runs[runs["experiment"].isin({s.experiment for s in SYSTEMS})]
    curves = load_curves(args.tracking_uri, runs["run_id"], metrics=("test_error", "train_error", "epoch_time_s"))
    table = reproduction_table(runs, curves, SYSTEMS)
    if not args.drop_missing:
        table = carry_over(table, args.out / "reproduction.csv", SYSTEMS)
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
