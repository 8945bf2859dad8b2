"""Helpers the test modules share: small real runs, the CLI in subprocesses, what a run logged.

Fixtures stay in conftest.py; these are plain functions, imported where used.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import mlflow
import torch

from lenet5.config import PROJECT_DIR
from lenet5.inspect_run import load_network
from lenet5.presets import compose_config

SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"
#: Metrics that time a pass: they differ between any two runs, however equal their numbers.
TIMING_METRICS = {"epoch_time_s", "train_images_per_s", "checkpoint_s"}


@cache
def _empty_store() -> Path:
    """An empty SQLite MLflow store, made once per test process."""
    folder = tempfile.mkdtemp(prefix="empty_store_")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the schema
    return path


def fresh_store(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of a new, empty SQLite MLflow store at `folder/name`: a copy of an empty store
    made once per process. Creating one runs MLflow's schema migrations, about 2 s each time;
    the copy takes milliseconds and is the same store. (Tests of store creation itself make theirs.)"""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_store(), folder / name)
    return f"sqlite:///{folder / name}"


def small_overrides(
    store: str, experiment: str = "tests", subset: int = 2000, test_subset: int = 1000, passes: int | None = 1
) -> list[str]:
    """Overrides that keep a run small: `subset` real MNIST training images, `test_subset` test
    images, `passes` epochs (None leaves them to the caller's config, as a study's stages set their
    own), artifacts beside the store."""
    return [
        f"data.train_subset={subset}",
        f"data.test_subset={test_subset}",
        *([f"trainer.max_epochs={passes}"] if passes is not None else []),
        "trainer.progress_bar=false",
        f"tracking.uri={store}",
        f"tracking.experiment={experiment}",
    ]


def compose(*overrides: str):
    return compose_config(list(overrides))


def run_cli(*args: str, cwd: Path = PROJECT_DIR, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a real subprocess. The timeout is there to end a hang, not to time
    the run: a run of 20 s alone took over 300 s beside a study and another test worker."""
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def assert_tables_rebuild_from_runs_csv(report: Path, out: Path) -> None:
    """`analysis.report --runs-csv report/runs.csv` writes into `out` the variant and factor
    tables `report` holds, byte for byte (no MLflow store needed)."""
    from analysis.report import main as report_main

    assert report_main(["--runs-csv", str(report / "runs.csv"), "--out", str(out)]) == 0
    for name in ("variants.md", "variants.csv", "factors.md", "factors.csv"):
        assert (out / name).read_bytes() == (report / name).read_bytes(), f"{report.name}/{name}"


def short_overrides(store: str, experiment: str, passes: int = 3, subset: int = 600) -> list[str]:
    return small_overrides(store, experiment, subset=subset, test_subset=500, passes=passes)


def launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "run.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def experiment_runs(store: str, experiment: str) -> list:
    client = mlflow.MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def wait_for(condition, timeout: float = 240.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def weights(store: str, run) -> dict[str, torch.Tensor]:
    """The trained weights the run logged as its MLflow model."""
    return {name: p.detach() for name, p in load_network(store, run.info.run_id).named_parameters()}


