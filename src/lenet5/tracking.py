"""MLflow tracking: one run per training job, named by its variant, owned end to end.

The run is created here (not by Lightning), so its status is decided here: FINISHED only
after the artifacts are written, FAILED (with a `failure_reason` tag) on any exception,
KILLED on Ctrl-C. Lightning's MLFlowLogger attaches to the run only to send metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import ssl
import tempfile
import time
import urllib.error
import urllib.request
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

from .config import ConfigError, factor_values, is_scientific_key
from .provenance import source_tags

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


#: URI schemes MLflow 3 has a tracking store for (mlflow.tracking._tracking_service.utils
#: registers these; "" is a plain path, i.e. a file store). A database URI may name its
#: driver after a "+" (postgresql+psycopg2://...).
STORE_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"

#: How long a tracking server may take to answer the reachability probe, in seconds.
PROBE_TIMEOUT_S = 5.0


def check_store(uri: str, experiment: str) -> None:
    """Refuse, with one line, a store no run could be recorded in; reads it, never writes.

    Runs before anything trains: without it an unreachable server makes MLflow retry for
    minutes, and a file that is not an MLflow database is only found when the run is created.
    """
    if not experiment.strip():
        raise ConfigError(f"tracking.experiment='{experiment}' is empty; name the MLflow experiment, e.g. tracking.experiment=lenet5")
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            f"tracking.uri={uri}: unknown scheme '{scheme}'; use sqlite:////ABSOLUTE/PATH.db, "
            f"http(s)://HOST:PORT (an mlflow server) or another MLflow store ({', '.join(s for s in STORE_SCHEMES if s)})"
        )
    if scheme == "sqlite":
        _check_sqlite_store(uri, experiment)
    elif scheme in ("http", "https"):
        _check_server(uri)


def _check_sqlite_store(uri: str, experiment: str) -> None:
    """The file is absent (MLflow creates it) in a writable folder, or an MLflow SQLite store
    where `experiment`, if present, is not deleted."""
    path_text = uri.split("://", 1)[1].removeprefix("/")  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    if path_text in ("", ":memory:"):
        raise ConfigError(f"tracking.uri={uri} is an in-memory store that keeps nothing; use sqlite:////ABSOLUTE/PATH.db")
    path = Path(path_text.split("?", 1)[0]).expanduser()
    if not path.parent.is_dir():
        raise ConfigError(f"tracking.uri={uri}: folder {path.parent} does not exist; create it or point tracking.uri elsewhere")
    if not path.exists():
        try:  # a real write, not os.access: root passes os.access even where nothing can be written
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as err:
            raise ConfigError(f"tracking.uri={uri}: cannot create files in {path.parent} ({err.strerror}); point tracking.uri elsewhere") from None
        return
    if not path.is_file():
        raise ConfigError(f"tracking.uri={uri}: {path} is not a file; point tracking.uri at a .db file")
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ConfigError(f"tracking.uri={uri}: {path} is not a SQLite database; point tracking.uri at an MLflow .db file or a new path")
    if not os.access(path, os.W_OK):
        raise ConfigError(f"tracking.uri={uri}: {path} is not writable; point tracking.uri elsewhere")
    if not header:  # an empty file: MLflow makes it a store
        return
    # Read-only: looking must leave the file byte for byte as it was.
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        if "experiments" not in tables:
            raise ConfigError(f"tracking.uri={uri}: {path} is a SQLite database but not an MLflow store; point tracking.uri at a new path")
        found = connection.execute("select lifecycle_stage from experiments where name = ?", (experiment,)).fetchone()
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"tracking.uri={uri}: {path} cannot be read as a SQLite database ({err})") from None
    finally:
        connection.close()
    if found is not None and found[0] == "deleted":
        raise ConfigError(
            f"tracking.experiment={experiment} is deleted in {uri}; restore it "
            f"(mlflow experiments restore) or choose another tracking.experiment"
        )


def _check_server(uri: str) -> None:
    """A plain GET of `<uri>/health` (every mlflow server answers it) with a short timeout."""
    url = uri.rstrip("/") + "/health"
    context = None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()  # as MLflow itself does with that variable
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S, context=context):
            return
    except urllib.error.HTTPError as err:
        if err.code != 404:
            return  # it answers (e.g. 401 behind an auth proxy): MLflow reports its own errors
        raise ConfigError(f"tracking.uri={uri}: {url} answers 404, so no mlflow server is at that address") from None
    except (urllib.error.URLError, socket.timeout, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"tracking.uri={uri}: no MLflow server answered within {PROBE_TIMEOUT_S:.0f} s ({reason}); "
            f"start one (mlflow server --port PORT) or use the local store (leave tracking.uri unset)"
        ) from None


#: MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it holds
#: model training ("custom_model_development"; the alternative is "genai_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: "custom_model_development"}


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The id of experiment `name`, created if needed (artifacts under `artifact_root` for a
    local store; a server decides for itself). Safe when several processes race to create it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the suite set it: same view
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_TAGS[EXPERIMENT_KIND_TAG])
        return experiment.experiment_id
    location = Path(artifact_root).expanduser().resolve().as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class _MetricsOnlyMLFlowLogger(MLFlowLogger):
    """Sends Lightning's metrics to a run this module owns; leaves the run's status alone."""

    def finalize(self, status: str = "success") -> None:
        pass


class _DropPickleWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Pickle or CloudPickle" not in record.getMessage()


_DROP_PICKLE_WARNING = _DropPickleWarning()


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

    def log_inputs(self, datasets: list, attempts: int = 3) -> None:
        # Jobs of one sweep running side by side register the same dataset (experiment, name,
        # digest) at once; the store's unique key makes all but one fail. A retry finds the row
        # the winner wrote and only links it to this run.
        for attempt in range(attempts):
            try:
                self.client.log_inputs(self.run_id, datasets=datasets)
                return
            except MlflowException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def log_model(self, model, input_example, name: str = "model") -> None:
        """Log a torch network as an MLflow model of this run (`runs:/<run id>/model`).

        `input_example` is a numpy batch, e.g. (1, 1, 32, 32) float32; MLflow derives the
        signature from it. This run is not MLflow's fluent active run, so the LoggedModel is
        created here in the run's experiment (mlflow.pytorch.log_model alone would put it in
        the process's current experiment, "Default"), and the tracking URI that log_model
        reads from the process is set for the call and restored.
        """
        import mlflow.pytorch
        import torch
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        run = self.client.get_run(self.run_id)
        logged = self.client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=self.run_id, params=run.data.params
        )
        # The suite chose pickle on purpose (above); MLflow's warning about it on every run is noise.
        logging.getLogger("mlflow.pytorch").addFilter(_DROP_PICKLE_WARNING)  # one object: added once
        # MLflow's own context manager: set_tracking_uri(get_tracking_uri()) would not restore
        # "unset" (it also exports MLFLOW_TRACKING_URI to every later subprocess).
        with _use_tracking_uri(self.tracking_uri):
            mlflow.pytorch.log_model(
                model, name=name, input_example=input_example, run_id=self.run_id, model_id=logged.model_id,
                # MLflow 3's default ("pt2", torch.export) loads back a traced graph without the
                # network's layers and methods (predict, C1 ... F6), which the suite reads.
                serialization_format="pickle",
                # Stated rather than inferred: inference loads the model in a subprocess (seconds).
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )  # fmt: skip


@contextmanager
def tracked_run(cfg: Any, name: str, extra_tags: dict[str, str] | None = None) -> Iterator[TrackedRun]:
    """Create the MLflow run for `cfg`, yield it, and end it FINISHED, FAILED or KILLED."""
    uri = cfg.tracking.uri
    client = MlflowClient(tracking_uri=uri)
    artifact_root = None if is_remote(uri) else cfg.tracking.artifact_root
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment, artifact_root)
    tags = {**run_tags(cfg), **source_tags(), **(extra_tags or {})}
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
