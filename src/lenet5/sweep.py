"""Multiruns as MLflow sweeps: one parent run per sweep command, every job a child.

The launching process creates the experiment and the parent run once, in a Hydra
callback (`on_multirun_start`), before any job starts, so parallel jobs (joblib, SLURM)
never race to create them. It writes `<sweep dir>/mlflow_sweep.json`; each job reads it
to tag its run as a child. The sweep id is a hash of the command (overrides and sweep
preset), so running the same command again finds the same parent and only runs what is
not FINISHED yet. At the end the parent gets the sweep's results tables as artifacts.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from .store import artifact_location
from .tracking import get_or_create_experiment

SWEEP_FILE = "mlflow_sweep.json"
SWEEP_PARENT_TAG = "sweep.parent"
#: Tag prefix set on a FINISHED run that a later sweep reused instead of training it again,
#: so that sweep's report counts it (`sweep.reused_by.<sweep id>` = "true").
SWEEP_REUSED_TAG = "sweep.reused_by."

#: Set by the callback at the end of a multirun in this process: jobs that ended FAILED.
failed_jobs: list[str] = []


def sweep_id_of(config: DictConfig) -> str:
    """Same command (task overrides + sweep preset params, in any order) -> same id."""
    params = config.hydra.sweeper.params
    command = {
        "overrides": sorted(config.hydra.overrides.task),
        "sweep_params": sorted(f"{k}={v}" for k, v in params.items()) if params else [],
        "experiment": str(config.tracking.experiment),
    }
    return hashlib.sha1(json.dumps(command, sort_keys=True).encode()).hexdigest()[:10]


def _find_parent(client: MlflowClient, experiment_id: str, sweep_id: str):
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.sweep_id = '{sweep_id}' and tags.`{SWEEP_PARENT_TAG}` = 'true'", max_results=1
    )
    return runs[0] if runs else None


class MLflowSweepCallback(Callback):
    """Hydra callback (see `hydra.callbacks` in conf/config.yaml)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        failed_jobs.clear()
        uri = str(config.tracking.uri)
        client = MlflowClient(uri)
        experiment_id = get_or_create_experiment(client, str(config.tracking.experiment), artifact_location(uri, config.tracking.artifact_root))
        sweep_id = sweep_id_of(config)
        preset = OmegaConf.select(config, "hydra.runtime.choices.sweep", default=None)
        command = " ".join(["python run.py -m", *config.hydra.overrides.task])
        parent = _find_parent(client, experiment_id, sweep_id)
        if parent is None:
            label = f"sweep={preset}" if preset and preset != "null" else "sweep"
            parent = client.create_run(
                experiment_id,
                run_name=f"{label} {sweep_id}",
                tags={SWEEP_PARENT_TAG: "true", "sweep_id": sweep_id, "sweep.command": command},
            )
        else:
            client.update_run(parent.info.run_id, status="RUNNING")
        self.started_ms = int(time.time() * 1000)
        self.client, self.parent_run_id, self.sweep_id = client, parent.info.run_id, sweep_id
        self.experiment_id, self.uri, self.experiment = experiment_id, uri, str(config.tracking.experiment)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / SWEEP_FILE).write_text(
            json.dumps({"sweep_id": sweep_id, "parent_run_id": self.parent_run_id, "tracking_uri": uri})
        )
        print(f"sweep {sweep_id}: parent run {self.parent_run_id} in experiment '{self.experiment}'")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        client, parent = self.client, self.parent_run_id
        try:
            failed = client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.sweep_id = '{self.sweep_id}' and attributes.status = 'FAILED' "
                f"and attributes.start_time >= {self.started_ms}",
            )
            failed_jobs[:] = [run.info.run_name for run in failed]
            client.set_tag(parent, "sweep.failed_jobs", str(len(failed_jobs)))
        finally:
            client.set_terminated(parent, "FINISHED")  # whatever happened, never left RUNNING


def sweep_context() -> dict[str, str] | None:
    """This job's sweep ({"sweep_id", "parent_run_id", "tracking_uri"}), or None outside a multirun."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def reuse_finished(sweep: dict[str, str], run) -> None:
    """Count the FINISHED `run` as a member of `sweep` (its parent stays the sweep that trained it)."""
    if run.data.tags.get("sweep_id") != sweep["sweep_id"]:
        MlflowClient(sweep["tracking_uri"]).set_tag(run.info.run_id, SWEEP_REUSED_TAG + sweep["sweep_id"], "true")


def find_finished(tracking_uri: str, experiment: str, config_hash: str):
    """A FINISHED run of the same config and seed in `experiment`, or None."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None
