"""Shared fixtures: real MNIST (from $MNIST_ROOT or ../shared/data), real MLflow stores in temp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra_plugins.lenet5_stacked_launcher.stacked_launcher import register as register_stacked_launcher

from .helpers import SHARED_DATA, fresh_store

# The tests compose and launch in-process, as the entry points do: hydra/launcher=stacked first.
register_stacked_launcher()

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
    return fresh_store(tmp_path)


#: Fixtures that train real runs or launch the CLI in subprocesses: a test that uses one is part
#: of the slow tier whether or not it says so (`make test-fast` runs the rest).
TRAINING_FIXTURES = {"study", "runs", "kept_store", "studied", "swept"}


#: The modules that take longest (fixtures that train, CLI launches), longest first. xdist hands
#: whole files (--dist loadfile) to its two workers in collection order; in alphabetical order the
#: longest came last, and one worker trained the last of them alone while the other idled.
LONGEST_FIRST = (
    "test_sweep.py", "test_stacked_resume.py", "test_study.py", "test_stacked.py", "test_training.py",
    "test_numerics.py", "test_resume.py", "test_sdlm.py", "test_reproduction.py", "test_tracking.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept
