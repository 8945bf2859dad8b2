"""MLflow tracking: one run per training job, named by its variant, owned end to end.

The run is created here (not by Lightning), so its status is decided here: FINISHED only
after the artifacts are written, FAILED (with a `failure_reason` tag) on any exception,
KILLED on Ctrl-C. Lightning's MLFlowLogger attaches to the run only to send metrics.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from .config import factor_values, is_scientific_key

#: Short names used in run names, e.g. "paper pool=max act=relu seed=1".
FACTOR_SHORT_NAMES = {"activation": "act", "activation_at": "act_at", "preprocess": "input"}


def plain_config(cfg: Any) -> dict:
    """The resolved config as plain Python (enums as their names)."""
    return json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))


def flatten_config(cfg: Any) -> dict[str, str]:
    """{"model.pool": "subsample", "optim.lr": "0.01", ...}: the config as MLflow params."""
    flat = pd.json_normalize(plain_config(cfg), sep=".").iloc[0].to_dict()
    return {key: json.dumps(value) if isinstance(value, list) else str(value) for key, value in flat.items()}


def config_hash(cfg: Any, *, include_seed: bool = True) -> str:
    """Short hash of everything that changes what is trained (seed optional).

    Two runs with the same hash trained the same variant on the same data with the same
    recipe; `include_seed=False` groups the seeds of one variant.
    """
    flat = flatten_config(cfg)
    kept = {
        key: value
        for key, value in flat.items()
        if is_scientific_key(key) and (include_seed or key != "seed")
    }
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def run_name(cfg: Any, preset_factors: dict[str, str] | None = None) -> str:
    """"<experiment> <factor>=<value>... seed=<n>", listing only the factors that differ
    from the preset's own choices (`preset_factors`), never a random name."""
    differing = {
        factor: value
        for factor, value in factor_values(cfg).items()
        if preset_factors is None or preset_factors.get(factor) != value
    }
    parts = [str(cfg.experiment)]
    parts += [f"{FACTOR_SHORT_NAMES.get(factor, factor)}={value}" for factor, value in differing.items()]
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def run_tags(cfg: Any) -> dict[str, str]:
    tags = {f"ablation.{factor}": value for factor, value in factor_values(cfg).items()}
    tags["ablation.experiment"] = str(cfg.experiment)
    tags["ablation.variant"] = str(cfg.variant)
    tags["seed"] = str(cfg.seed)
    tags["config_hash"] = config_hash(cfg)
    tags["variant_hash"] = config_hash(cfg, include_seed=False)
    return tags


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The id of experiment `name`, created if needed (artifacts under `artifact_root` for a
    local store; a server decides for itself). Safe when several processes race to create it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root).expanduser().resolve().as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class _MetricsOnlyMLFlowLogger(MLFlowLogger):
    """Sends Lightning's metrics to a run this module owns; leaves the run's status alone."""

    def finalize(self, status: str = "success") -> None:
        pass


@dataclass
class TrackedRun:
    client: MlflowClient
    run_id: str
    experiment_name: str
    tracking_uri: str
    name: str

    def lightning_logger(self) -> MLFlowLogger:
        return _MetricsOnlyMLFlowLogger(
            experiment_name=self.experiment_name, tracking_uri=self.tracking_uri, run_id=self.run_id
        )

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, key, float(value), step=step)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


@contextmanager
def tracked_run(cfg: Any, name: str, extra_tags: dict[str, str] | None = None) -> Iterator[TrackedRun]:
    """Create the MLflow run for `cfg`, yield it, and end it FINISHED, FAILED or KILLED."""
    uri = cfg.tracking.uri
    client = MlflowClient(tracking_uri=uri)
    artifact_root = None if is_remote(uri) else cfg.tracking.artifact_root
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment, artifact_root)
    tags = {**run_tags(cfg), **(extra_tags or {})}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    tracked = TrackedRun(client, run.info.run_id, cfg.tracking.experiment, uri, name)
    try:
        yield tracked
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
        reason = "interrupted" if interrupted else f"{type(err).__name__}: {err}"
        try:
            client.set_tag(tracked.run_id, "failure_reason", reason[:5000])
        finally:
            client.set_terminated(tracked.run_id, "KILLED" if interrupted else "FAILED")
        raise
    client.set_terminated(tracked.run_id, "FINISHED")
