"""Shared fixtures: real MNIST (from $MNIST_ROOT or ../shared/data), real MLflow stores in temp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra_plugins.lenet5_stacked_launcher.stacked_launcher import register as register_stacked_launcher

from lenet5.config import PROJECT_DIR
from lenet5.presets import compose_config

# The tests compose and launch in-process, as the entry points do: hydra/launcher=stacked first.
register_stacked_launcher()

SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"


def _mnist_root() -> Path:
    root = os.environ.get("MNIST_ROOT") or (str(SHARED_DATA) if SHARED_DATA.is_dir() else "")
    if not root or not (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.exit("tests need MNIST: set MNIST_ROOT to a folder holding MNIST/raw/ (CI: ../shared/data)", 2)
    return Path(root).resolve()


@pytest.fixture(scope="session", autouse=True)
def mnist_root() -> Path:
    """Absolute MNIST root, also exported so subprocesses and ${oc.env:MNIST_ROOT} see it."""
    root = _mnist_root()
    os.environ["MNIST_ROOT"] = str(root)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return root


@pytest.fixture
def store(tmp_path) -> str:
    """A fresh SQLite MLflow tracking URI in a temp dir (artifacts beside it)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def small_overrides(store: str, experiment: str = "tests", subset: int = 2000) -> list[str]:
    """Overrides that keep a run small: a real MNIST subset, 1 epoch, 1,000 test images
    (artifacts go beside the store by default)."""
    return [
        f"data.train_subset={subset}",
        "data.test_subset=1000",
        "trainer.max_epochs=1",
        "trainer.progress_bar=false",
        f"tracking.uri={store}",
        f"tracking.experiment={experiment}",
    ]


def compose(*overrides: str):
    return compose_config(list(overrides))


def run_cli(*args: str, cwd: Path = PROJECT_DIR, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a real subprocess."""
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
