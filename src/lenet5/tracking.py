"""MLflow tracking: one run per training job, named by its variant, owned end to end.

The run is created here (not by Lightning), so its status is decided here: FINISHED only
after the artifacts are written, FAILED (with a `failure_reason` tag) on any exception,
KILLED on Ctrl-C. Lightning's MLFlowLogger attaches to the run only to send metrics.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lightning.pytorch.loggers import Logger
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .identity import config_hash, run_tags
from .provenance import source_tags
from .resume import claim_run, yield_to_earlier_launch
from .store import artifact_location

#: MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it holds
#: model training ("custom_model_development"; the alternative is "genai_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: "custom_model_development"}


def list_runs(client: MlflowClient, experiment_id: str) -> list:
    """Every active run of the experiment, across as many pages as the store returns."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=5000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


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


class PassLogger(Logger):
    """Lightning's metrics for a run this module owns, held back until the pass is committed.

    `log_metrics` only buffers; `commit(tags)` sends the buffer and `tags` to the store in
    one `log_batch` (one transaction), which `resume.PassCheckpoint` calls once the pass's
    checkpoint is uploaded. `experiment` (the client) and `run_id` serve callbacks that log
    artifacts, as on Lightning's MLFlowLogger. The run's status is left to `tracked_run`.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        super().__init__()
        self._client, self.run_id = client, run_id
        self.pending: list[Metric] = []

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @property
    def experiment(self) -> MlflowClient:
        return self._client

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the whole config is logged as params when the run is created

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step or 0) for key, value in metrics.items() if key != "epoch"]

    def commit(self, tags: list[RunTag]) -> None:
        """Send the held metrics and `tags` together (MLflow takes up to 1,000 metrics a batch)."""
        for start in range(0, max(len(self.pending), 1), 1000):
            self._client.log_batch(self.run_id, metrics=self.pending[start : start + 1000], tags=tags if start == 0 else [])
        self.pending = []


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
    #: The unfinished run this one continues (its last committed pass in the `resume.pass` tag), or None.
    resumed: Any = None

    def lightning_logger(self) -> PassLogger:
        return PassLogger(self.client, self.run_id)

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

    def log_model(self, model, input_example, step: int = 0, link: tuple[str, ...] = (), name: str = "model") -> str:
        """Log a torch network as an MLflow model of this run (`runs:/<run id>/model`); returns
        its model id.

        `input_example` is a numpy batch, e.g. (1, 1, 32, 32) float32; MLflow derives the
        signature from it. MLflow links the run's metrics logged at `step` (the pass that made
        the network) to the model; `link` names metrics logged at other steps to link too, each
        by its last value (`link_metrics`). This run is not MLflow's fluent active run, so the LoggedModel is
        created here in the run's experiment (mlflow.pytorch.log_model alone would put it in
        the process's current experiment, "Default"), and the tracking URI that log_model
        reads from the process is set for the call and restored.
        """
        import mlflow.pytorch
        import torch

        from .adapters import global_tracking_uri

        run = self.client.get_run(self.run_id)
        logged = self.client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=self.run_id, params=run.data.params
        )
        # The suite chose pickle on purpose (above); MLflow's warning about it on every run is noise.
        logging.getLogger("mlflow.pytorch").addFilter(_DROP_PICKLE_WARNING)  # one object: added once
        # Set for the call and restored, "unset" included: set_tracking_uri(get_tracking_uri())
        # would leave it set (and exported as MLFLOW_TRACKING_URI to every later subprocess).
        with global_tracking_uri(self.tracking_uri):
            mlflow.pytorch.log_model(
                model, name=name, input_example=input_example, run_id=self.run_id, model_id=logged.model_id, step=step,
                # MLflow 3's default ("pt2", torch.export) loads back a traced graph without the
                # network's layers and methods (predict, C1 ... F6), which the suite reads.
                serialization_format="pickle",
                # Stated rather than inferred: inference loads the model in a subprocess (seconds).
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )  # fmt: skip
        self.link_metrics(logged.model_id, link)
        return logged.model_id

    def link_metrics(self, model_id: str, keys: tuple[str, ...]) -> None:
        """Link the last value of each metric in `keys` to the logged model `model_id`, as
        log_model links the metrics of its step: the same point (value, step, timestamp) logged
        again with the model's id, which the run's history keeps once."""
        for key in keys:
            history = self.client.get_metric_history(self.run_id, key)
            if history:
                last = max(history, key=lambda m: (m.step, m.timestamp))
                self.client.log_metric(self.run_id, key, last.value, timestamp=last.timestamp, step=last.step, model_id=model_id)


def open_run(cfg: Any, name: str, extra_tags: dict[str, str] | None = None, claim=None, resume: bool | None = None) -> TrackedRun:
    """Create (or, with a `resume.JobClaim`, take over) the MLflow run for `cfg`, RUNNING.
    `resume` (default `tracking.resume`) false: never continue an unfinished run, start anew."""
    uri = cfg.tracking.uri
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment, artifact_location(uri, cfg.tracking.artifact_root))
    job_hash = config_hash(cfg)
    resume = cfg.tracking.resume if resume is None else resume
    resumed = claim_run(client, claim, experiment_id, job_hash, resume) if claim is not None else None
    if resumed is not None:
        run_id = resumed.info.run_id
    else:
        tags = {**run_tags(cfg), **source_tags(), **(extra_tags or {})}
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    tracked = TrackedRun(client, run_id, cfg.tracking.experiment, uri, name, resumed)
    if claim is not None:
        claim.start_heartbeat(client, run_id)
        if resumed is None:
            yield_to_earlier_launch(client, claim, experiment_id, job_hash, run_id)
    return tracked


def end_run(tracked: TrackedRun, err: BaseException | None = None) -> None:
    """End the run FINISHED, or after `err` KILLED (interrupted) or FAILED, with its `failure_reason`."""
    if err is None:
        tracked.client.set_terminated(tracked.run_id, "FINISHED")
        return
    interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
    reason = "interrupted" if interrupted else f"{type(err).__name__}: {err}"
    try:
        tracked.client.set_tag(tracked.run_id, "failure_reason", reason[:5000])
    finally:
        tracked.client.set_terminated(tracked.run_id, "KILLED" if interrupted else "FAILED")


@contextmanager
def tracked_run(cfg: Any, name: str, extra_tags: dict[str, str] | None = None, claim=None) -> Iterator[TrackedRun]:
    """Create (or, with a `resume.JobClaim`, take over) the MLflow run for `cfg`, yield it, and
    end it FINISHED, FAILED or KILLED. `TrackedRun.resumed` is the run taken over, or None."""
    tracked = open_run(cfg, name, extra_tags, claim)
    try:
        yield tracked
    except BaseException as err:
        end_run(tracked, err)
        raise
    end_run(tracked)
