"""MLflow runs as tidy pandas frames: one row per finished training run, one per metric step.

Only the configuration (`lenet5.config`) and `lenet5.adapters` are imported from the training
package: the rest pulls in Lightning and costs seconds on every report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from lenet5.adapters import global_tracking_uri
from lenet5.config import DEFAULT_TRACKING_URI  # noqa: F401  (re-exported: report, notebook)
from lenet5.config import ABLATION_FACTORS, KEYS_ADDED_LATER, NON_SCIENTIFIC_KEYS, is_scientific_key

#: The factor columns of `load_runs`' frame, in the config's order (pool, activation, ...).
FACTORS: tuple[str, ...] = tuple(ABLATION_FACTORS)
#: Labels a run carries besides its factors: the `experiment=` preset and the `variant=` delta.
LABELS = {"experiment": "ablation.experiment", "delta": "ablation.variant"}

#: Params that do not change what is trained, plus the labels and the seed (columns of their own).
NON_SCIENTIFIC_PARAMS = (*NON_SCIENTIFIC_KEYS, "experiment", "variant", "seed")

#: Metrics read from each run; the final (last-step) value becomes a column of the same name.
FINAL_METRICS = ("test_error", "train_error", "val_error", "train_loss", "model_trainable_params")
CURVE_METRICS = ("test_error", "train_error", "val_error", "train_loss")

#: Column prefix of the tags that mark a run as reused by another sweep (lenet5.sweep.SWEEP_REUSED_TAG).
REUSED_TAG_PREFIX = "tags.sweep.reused_by."

_SEED_SUFFIX = re.compile(r" seed=-?\d+$")

#: Tag of a fair study's runs (lenet5.study): `tune` (learning rate search on a validation split,
#: no test evaluation) or `final` (the selected recipe over seeds, on the test set).
STAGE_TAG = "stage"


class ReportError(ValueError):
    """A report that cannot be made; the message is one line naming the bad value."""


def scientific_params(runs: pd.DataFrame) -> list[str]:
    """The dotted param columns of `load_runs`' frame (`optim.lr`, `data.batch_size`, ...)."""
    return [column for column in runs.columns if "." in column]


def _client(tracking_uri: str) -> MlflowClient:
    # MLflow creates a missing SQLite file on first contact: a typo would leave an empty store behind.
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path} (tracking URI {tracking_uri})")
    return MlflowClient(tracking_uri)


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"unknown experiment '{experiment}' (experiments in the store: {', '.join(names) or 'none'})")
    return found.experiment_id


def load_runs(
    tracking_uri: str,
    experiment: str,
    sweep_id: str | None = None,
    statuses: tuple[str, ...] = ("FINISHED",),
    with_tuning: bool = False,
) -> pd.DataFrame:
    """Every FINISHED training run of `experiment` (of sweep `sweep_id` when given), one row each.

    Columns: run_id, run_name, variant (the run name without " seed=N"; a short
    variant_hash suffix where two configurations share a name), variant_hash, seed (int),
    sweep_id, start_time, end_time, experiment and delta (the `experiment=` preset and the `variant=`
    delta), one column per factor (`FACTORS`), the final test_error, train_error, val_error
    (%, NaN without a validation split), train_loss and model_trainable_params, then every
    scientific param other than the factors under its config key (`optim.lr`, `data.batch_size`,
    ...; strings as logged). Sweep parents (no `config_hash` tag) and runs that did not finish
    are left out (`statuses` widens that: ("FINISHED", "KILLED") keeps stopped runs too, with a
    `status` column). A study's tuning runs (tag `stage=tune`: validation error only, no test
    error) are left out too unless `with_tuning`; a `stage` column says which runs are a study's
    finals. Rows are in start order.
    """
    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, experiment)
    with global_tracking_uri(tracking_uri):
        raw = mlflow.search_runs(experiment_ids=[experiment_id], output_format="pandas")
    if sweep_id is not None:
        # A sweep's runs: its own children, plus finished runs of other sweeps that it reused
        # instead of training them again (tagged `sweep.reused_by.<id>`, see lenet5.sweep).
        reused_by = {c.removeprefix(REUSED_TAG_PREFIX) for c in raw.columns if c.startswith(REUSED_TAG_PREFIX)}
        sweep_ids = set(raw["tags.sweep_id"].dropna()) if "tags.sweep_id" in raw else set()
        if sweep_id not in sweep_ids | reused_by:
            raise ReportError(
                f"unknown sweep id '{sweep_id}' in experiment '{experiment}' "
                f"(sweep ids there: {', '.join(sorted(sweep_ids)) or 'none'})"
            )
        own = raw["tags.sweep_id"] == sweep_id if "tags.sweep_id" in raw else False
        reused = raw[REUSED_TAG_PREFIX + sweep_id] == "true" if sweep_id in reused_by else False
        raw = raw[own | reused]
    is_training_run = raw["tags.config_hash"].notna() if "tags.config_hash" in raw else False
    keep = raw["status"].isin(statuses) & is_training_run
    if not with_tuning:
        keep &= raw.get(f"tags.{STAGE_TAG}", pd.Series(None, index=raw.index, dtype=object)) != "tune"
    raw = raw[keep]
    if raw.empty:
        where = f"sweep '{sweep_id}' of experiment '{experiment}'" if sweep_id else f"experiment '{experiment}'"
        raise ReportError(f"no {'/'.join(statuses)} training runs in {where}")
    raw = raw.sort_values("start_time")
    tidy = _tidy(raw)
    if statuses != ("FINISHED",):
        tidy.insert(3, "status", raw["status"].to_numpy())
    return tidy


def read_runs_csv(path: str | Path) -> pd.DataFrame:
    """`load_runs`' frame back from the `runs.csv` a report wrote: the committed results rebuild
    their tables without the MLflow store. Params come back as the strings they were logged as
    (not re-parsed as numbers: "0.0005" and "5e-4" must stay as different as they were), the
    seed as int and the final metrics as float (pandas writes floats with repr: exact)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no runs file at {path} (a report writes runs.csv beside variants.csv)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportError(f"{path} is not a report's runs.csv ({str(err).splitlines()[0]})") from None
    missing = {"run_id", "variant", "seed", "test_error"} - set(frame.columns)
    if missing:
        raise ReportError(f"{path} is not a report's runs.csv (no column {', '.join(sorted(missing))})")
    frame["seed"] = frame["seed"].astype(int)
    for metric in FINAL_METRICS:
        if metric in frame:
            frame[metric] = frame[metric].astype(float)
    return frame


def _tidy(raw: pd.DataFrame) -> pd.DataFrame:
    factor_keys = {f"params.{key}" for key in ABLATION_FACTORS.values()}
    params = [
        column
        for column in raw.columns
        if column.startswith("params.") and column not in factor_keys and is_scientific_key(column.removeprefix("params."), NON_SCIENTIFIC_PARAMS)
    ]
    frame = pd.DataFrame(
        {
            "run_id": raw["run_id"],
            "run_name": raw["tags.mlflow.runName"],
            "variant_hash": raw["tags.variant_hash"],
            "seed": raw["tags.seed"].astype(int),
            "sweep_id": raw["tags.sweep_id"] if "tags.sweep_id" in raw else None,
            "start_time": raw["start_time"],
            "end_time": raw["end_time"],
            "stage": raw[f"tags.{STAGE_TAG}"] if f"tags.{STAGE_TAG}" in raw else None,
            # .get: runs recorded before a factor or label existed lack its tag (NaN here).
            **{label: raw.get(f"tags.{tag}") for label, tag in LABELS.items()},
            **{factor: raw.get(f"tags.ablation.{factor}") for factor in FACTORS},
            **{metric: raw.get(f"metrics.{metric}", float("nan")) for metric in FINAL_METRICS},
            **{column.removeprefix("params."): raw[column] for column in sorted(params)},
        }
    ).reset_index(drop=True)
    # Runs recorded before a key existed trained with its earlier value (all of them on MNIST).
    for key, value in KEYS_ADDED_LATER.items():
        if key in frame:
            frame[key] = frame[key].fillna(value)
    for factor, key in ABLATION_FACTORS.items():
        if key in KEYS_ADDED_LATER and factor in frame:
            frame[factor] = frame[factor].fillna(KEYS_ADDED_LATER[key])
    frame.insert(2, "variant", _variant_labels(frame))
    return frame


def _variant_labels(frame: pd.DataFrame) -> pd.Series:
    """Run names without their seed; names shared by different configurations get "[hash]"."""
    names = frame["run_name"].str.replace(_SEED_SUFFIX, "", regex=True)
    shared = frame.groupby(names)["variant_hash"].transform("nunique") > 1
    return names.where(~shared, names + " [" + frame["variant_hash"].str[:6] + "]")


def load_curves(tracking_uri: str, run_ids: Iterable[str], metrics: Iterable[str] = CURVE_METRICS) -> pd.DataFrame:
    """Per-epoch histories: columns run_id, metric, step (epochs completed), value.

    Metrics a run never logged (val_error without a validation split) are simply absent.
    """
    client = _client(tracking_uri)
    rows = [
        (run_id, point.key, point.step, point.value)
        for run_id in run_ids
        for metric in metrics
        for point in client.get_metric_history(run_id, metric)
    ]
    curves = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])
    return curves.sort_values(["run_id", "metric", "step"], ignore_index=True)


def training_passes(tracking_uri: str, run_ids: Iterable[str]) -> pd.DataFrame:
    """One row per run and training pass, from its `epoch_time_s` history: run_id, logged_at
    (s since the epoch), seconds, stack_size (the run's `stack.size` tag; 1 for a single run).
    The frame `training_time_of` reads; a run that trained no pass has no row."""
    client = _client(tracking_uri)
    rows = []
    for run_id in dict.fromkeys(run_ids):
        stack_size = int(client.get_run(run_id).data.tags.get("stack.size", "1"))
        for point in client.get_metric_history(run_id, "epoch_time_s"):
            rows.append((run_id, point.timestamp / 1000.0, point.value, stack_size))
    return pd.DataFrame(rows, columns=["run_id", "logged_at", "seconds", "stack_size"])


def training_time_of(passes: pd.DataFrame) -> dict[str, float]:
    """passes: one row per run and training pass: logged_at (s since the epoch, when the pass's
    metrics were logged), seconds (the pass's training time), stack_size (models trained
    together in that pass's process; 1 for a single run). Returns

    - `core_s`: process-seconds of training: each pass's seconds shared among the models of
      its stack, summed (a stack of K costs one process, not K);
    - `wall_s`: seconds of wall clock in which at least one of the runs was training (the
      union of the intervals [logged_at - seconds, logged_at]), which leaves out the gaps
      between launches of a resumed study;
    - `passes`: the number of (run, pass) rows.
    """
    if passes.empty:
        return {"core_s": 0.0, "wall_s": 0.0, "passes": 0}
    core = float((passes["seconds"] / passes["stack_size"]).sum())
    intervals = sorted(zip(passes["logged_at"] - passes["seconds"], passes["logged_at"]))
    wall, (start, end) = 0.0, intervals[0]
    for low, high in intervals[1:]:
        if low > end:
            wall, start = wall + end - start, low
        end = max(end, high)
    return {"core_s": core, "wall_s": wall + end - start, "passes": len(passes)}
