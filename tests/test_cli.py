"""The command line, in real subprocesses: the issue's check command and every kind of bad input."""

from __future__ import annotations

import mlflow
import pytest

from lenet5.config import PROJECT_DIR

from .conftest import run_cli, small_overrides


@pytest.mark.slow
def test_paper_check_command_records_the_run(tmp_path):
    store = f"sqlite:///{tmp_path / 'x.db'}"
    done = run_cli(
        "experiment=paper", "data.train_subset=2000", "trainer.max_epochs=1",
        f"tracking.uri={store}", "tracking.experiment=check", "trainer.progress_bar=false",
        f"tracking.artifact_root={tmp_path / 'artifacts'}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test error" in done.stdout and f"mlflow ui --backend-store-uri {store}" in done.stdout
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("check").experiment_id])
    assert run.data.metrics["model_trainable_params"] == 60000
    assert run.data.metrics["model_connections"] == 340908
    assert "test_error" in run.data.metrics
    assert run.data.tags["ablation.head"] == "rbf" and run.data.tags["ablation.pool"] == "subsample"


BAD_INPUTS = [
    (["model.pool=maxx"], ["maxx", "subsample, max, avg"]),
    (["trainer.max_epochs=abc"], ["abc", "Integer"]),
    (["loss=map", "model.head=softmax"], ["loss=map", "model.head=softmax", "model.head=rbf"]),
    (["loss=hinge"], ["hinge", "cross_entropy, map, mle"]),
    (["experiment=lenet7"], ["lenet7", *sorted(p.stem for p in (PROJECT_DIR / "conf" / "experiment").glob("*.yaml"))]),
    (["data.root=/nonexistent", "data.download=false"], ["/nonexistent/MNIST/raw/", "data.root"]),
    (["-m", "seed=0,1", "model.activation=scaled_tanh,swish"], ["swish", "relu"]),
    (["data.preprocess=unit"], ["28x28", "data.preprocess=paper"]),
]


def all_runs(store: str) -> list:
    client = mlflow.MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def kept_store(tmp_path_factory):
    """A store that already holds a finished run: a rejected command must leave it as it was."""
    folder = tmp_path_factory.mktemp("kept")
    store_file = folder / "kept.db"
    done = run_cli(*small_overrides(f"sqlite:///{store_file}", subset=200), "data.test_subset=100", cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    return store_file


@pytest.mark.parametrize("args,mentions", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_before_anything_is_recorded(args, mentions, kept_store, tmp_path):
    store_file = kept_store
    store = f"sqlite:///{store_file}"
    before = store_file.read_bytes()

    done = run_cli(*args, f"tracking.uri={store}", cwd=tmp_path, timeout=120)

    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for mention in mentions:
        assert mention in lines[0]
    assert store_file.read_bytes() == before
    assert len(all_runs(store)) == 1
