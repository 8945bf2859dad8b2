"""The results tables of a finished sweep, attached to its MLflow parent run.

A Hydra callback beside `lenet5.sweep.MLflowSweepCallback` (both listed under
`hydra.callbacks` in conf/config.yaml): the sweep layer records, this report layer
summarises, and neither imports the other's upper half.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from lenet5.sweep import SWEEP_FILE

from .report import write_report
from .runs import ReportError


class SweepSummaryCallback(Callback):
    """At the end of a multirun: `variants.*`, `factors.*` and figures of the sweep's runs
    under `<sweep dir>/report`, logged on the parent run under `summary/`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_file = sweep_dir / SWEEP_FILE
        if not sweep_file.is_file():  # the sweep callback could not open a parent run
            return
        sweep = json.loads(sweep_file.read_text())
        client = MlflowClient(sweep["tracking_uri"])
        out = sweep_dir / "report"
        try:
            files = write_report(sweep["tracking_uri"], str(config.tracking.experiment), out, sweep_id=sweep["sweep_id"])
        except ReportError as err:  # e.g. every job failed: nothing to summarise
            client.set_tag(sweep["parent_run_id"], "summary_error", str(err))
            return
        for path in files.values():
            client.log_artifact(sweep["parent_run_id"], str(path), "summary")
        print(f"sweep {sweep['sweep_id']}: summary in {out} and on parent run {sweep['parent_run_id']}")
