"""The command line, in real subprocesses: the issue's check command and every kind of bad input."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from lenet5.cli import main
from lenet5.config import PROJECT_DIR

from .helpers import run_cli, small_overrides


@pytest.mark.slow
def test_paper_check_command_records_the_run(tmp_path):
    (tmp_path / "store").mkdir()
    store = f"sqlite:///{tmp_path / 'store' / 'x.db'}"
    done = run_cli(
        # 300 training and 300 test images: what is checked is what the run records, not how well it learns.
        "experiment=paper", "data.train_subset=300", "data.test_subset=300", "trainer.max_epochs=1",
        f"tracking.uri={store}", "tracking.experiment=check", "trainer.progress_bar=false", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test error" in done.stdout and f"mlflow ui --backend-store-uri {store}" in done.stdout
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("check").experiment_id])
    assert run.data.metrics["model_trainable_params"] == 60000
    assert run.data.metrics["model_connections"] == 340908
    assert "test_error" in run.data.metrics
    assert run.data.tags["ablation.head"] == "rbf" and run.data.tags["ablation.pool"] == "subsample"
    assert run.data.tags["mlflow.source.name"] == "run.py"
    # The store and its artifacts live together: copy or delete the folder, and both go.
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert any((tmp_path / "store" / "mlartifacts").rglob("config.yaml"))


BAD_INPUTS = [
    (["model.pool=maxx"], ["maxx", "subsample, max, avg"]),
    (["trainer.max_epochs=abc"], ["abc", "Integer"]),
    (["loss=map", "model.head=softmax"], ["loss=map", "model.head=softmax", "model.head=rbf"]),
    (["loss=hinge"], ["hinge", "cross_entropy, map, mle"]),
    (["experiment=lenet7"], ["lenet7", *sorted(p.stem for p in (PROJECT_DIR / "conf" / "experiment").glob("*.yaml"))]),
    (["data.root=/nonexistent", "data.download=false"], ["/nonexistent/MNIST/raw/", "data.root"]),
    (["-m", "seed=0,1", "model.activation=scaled_tanh,swish"], ["swish", "relu"]),
    (["data.preprocess=unit"], ["28x28", "data.preprocess=paper"]),
    (["trainer.accelerator=foo"], ["trainer.accelerator=foo", "auto, cpu, gpu, cuda, mps, tpu"]),
    (["trainer.devices=abc"], ["trainer.devices=abc", "trainer.devices=auto or 1"]),
    (["+model.pol=max"], ["model.pol=max", "did you mean model.pool?"]),
    (["loss.j=nan"], ["loss.j=nan", "finite"]),
    (["optim.lr=nan"], ["optim.lr=nan", "finite"]),
    (["optim.lr=inf"], ["optim.lr=inf", "finite"]),
    (["tracking.experiment="], ["tracking.experiment=''", "empty"]),
    (["data.augment=paper", "data.distorted_copies=0"], ["data.distorted_copies=0", "data.augment=none"]),
    (["data.distortion.scale=5"], ["data.distortion.scale=5.0", "[0, 1)"]),
    (["data.test_subset=20000"], ["data.test_subset=20000", "10000"]),
    (["-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], ["hydra.launcher.n_jobs=0"]),
]
if not (torch.cuda.is_available() or torch.backends.mps.is_available()):  # only a GPU-less machine must refuse it
    BAD_INPUTS.append((["trainer.accelerator=gpu"], ["trainer.accelerator=gpu", "trainer.accelerator=auto"]))


def all_runs(store: str) -> list:
    client = mlflow.MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def kept_store(tmp_path_factory):
    """A store that already holds a finished run: a rejected command must leave it as it was."""
    folder = tmp_path_factory.mktemp("kept")
    store_file = folder / "kept.db"
    done = run_cli(*small_overrides(f"sqlite:///{store_file}", subset=200, test_subset=100), cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    return store_file


@pytest.mark.parametrize("args,mentions", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_before_anything_is_recorded(args, mentions, kept_store, monkeypatch, capsys):
    """In process: `main()` is what `python run.py` runs, and it refuses before Hydra starts
    (a subprocess per case only added the interpreter's start-up, 5 to 12 s each; the next
    test runs the real command line)."""
    store = f"sqlite:///{kept_store}"
    before = kept_store.read_bytes()
    line = refused_in_process([*args, f"tracking.uri={store}"], monkeypatch, capsys)
    for mention in mentions:
        assert mention in line
    assert kept_store.read_bytes() == before
    assert len(all_runs(store)) == 1


@pytest.mark.parametrize("args", [["model.pool=maxx"], ["-m", "seed=0,1", "model.activation=scaled_tanh,swish"]], ids=["run", "multirun"])
def test_the_real_command_line_refuses_in_one_line_and_exit_status_2(args, kept_store, tmp_path):
    store = f"sqlite:///{kept_store}"
    before = kept_store.read_bytes()
    done = run_cli(*args, f"tracking.uri={store}", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and ("maxx" in lines[0] or "swish" in lines[0]), done.stderr
    assert kept_store.read_bytes() == before
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def one_error_line(done) -> str:
    """The single `error:` line a refused command prints (asserting it is the only output on stderr)."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_unreachable_server_is_refused_in_seconds(tmp_path):
    # Port 9 (discard) has no listener: MLflow itself would retry for minutes.
    started = time.monotonic()
    done = run_cli("tracking.uri=http://127.0.0.1:9", cwd=tmp_path, timeout=120)
    assert time.monotonic() - started < 15
    line = one_error_line(done)
    assert "tracking.uri=http://127.0.0.1:9" in line and "mlflow server" in line


@pytest.mark.parametrize(
    "store_file,content,mentions",
    [
        ("notes.db", b"hello, not a database\n", ["is not a SQLite database"]),
        ("missing/m.db", None, ["folder", "does not exist"]),
    ],
    ids=["text file", "missing folder"],
)
def test_bad_store_file_is_refused_and_left_as_it_was(store_file, content, mentions, tmp_path):
    path = tmp_path / store_file
    if content is not None:
        path.write_bytes(content)
    done = run_cli(f"tracking.uri=sqlite:///{path}", cwd=tmp_path, timeout=120)
    line = one_error_line(done)
    assert f"tracking.uri=sqlite:///{path}" in line
    for mention in mentions:
        assert mention in line
    if content is not None:
        assert path.read_bytes() == content
    else:
        assert not path.parent.exists()


def test_unknown_store_scheme(tmp_path):
    line = one_error_line(run_cli("tracking.uri=foo://bar", cwd=tmp_path, timeout=120))
    assert "tracking.uri=foo://bar" in line and "unknown scheme 'foo'" in line


# The same checks, in process (main() exits before Hydra starts): the rest of the ranges.
MORE_BAD_INPUTS = [
    (["trainer.devices=2"], "trainer.devices=2"),
    (["++model.pol=max"], "did you mean model.pool?"),
    (["+foo=1"], "foo=1 is not a config key"),
    (["optim.momentum=-inf"], "optim.momentum=-inf must be a finite number"),
    (["optim.momentum=1"], "optim.momentum=1.0 must be in [0, 1)"),
    (["optim.betas=[0.9,1.5]"], "optim.betas[1]=1.5"),
    (["optim.mu=0"], "optim.mu=0.0 must be positive"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1.0"),
    (["optim.gamma=0"], "optim.gamma=0.0"),
    (["data.distortion.squeeze=1"], "data.distortion.squeeze=1.0"),
    (["data.distortion.shear=2"], "data.distortion.shear=2.0"),
    (["data.distortion.translate=-1"], "data.distortion.translate=-1.0"),
    (["data.preprocess=unit", "model.c1_padding=2", "data.distortion.translate=28"], "data.distortion.translate=28.0 must be in [0, 28)"),
    (["tracking.misclassified_shown=-1"], "tracking.misclassified_shown=-1"),
    (["optim.curvature_every=-1"], "optim.curvature_every=-1"),
    (["optim.curvature_gamma=1.5"], "optim.curvature_gamma=1.5"),
    (["model.init_gain=0"], "model.init_gain=0.0"),
    (["tracking.heartbeat_s=0"], "tracking.heartbeat_s=0.0 must be a positive number of seconds"),
    (["tracking.uri=sqlite://"], "in-memory"),
    (["hydra.launcher.n_jobs=2"], "add hydra/launcher=joblib"),
]


def refused_in_process(args: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr("sys.argv", ["run.py", *args])
    monkeypatch.setattr("lenet5.cli._hydra_main", lambda: pytest.fail(f"{args} was accepted and would train"))
    capsys.readouterr()  # only what main() prints counts
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("args,mention", MORE_BAD_INPUTS, ids=[" ".join(a) for a, _ in MORE_BAD_INPUTS])
def test_more_bad_input_is_one_line(args, mention, kept_store, monkeypatch, capsys):
    before = kept_store.read_bytes()
    uri = [] if any(a.startswith("tracking.uri=") for a in args) else [f"tracking.uri=sqlite:///{kept_store}"]
    assert mention in refused_in_process([*args, *uri], monkeypatch, capsys)
    assert kept_store.read_bytes() == before


def test_sqlite_file_of_another_program_is_refused(tmp_path, monkeypatch, capsys):
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("create table notes (text)")
    before = path.read_bytes()
    line = refused_in_process([f"tracking.uri=sqlite:///{path}"], monkeypatch, capsys)
    assert "not an MLflow store" in line and path.read_bytes() == before


def test_deleted_experiment_is_refused(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{path}")
    client.delete_experiment(client.create_experiment("gone"))
    before = path.read_bytes()
    line = refused_in_process([f"tracking.uri=sqlite:///{path}", "tracking.experiment=gone"], monkeypatch, capsys)
    assert "tracking.experiment=gone is deleted" in line and path.read_bytes() == before


def _hold_write_lock(path, seconds: float | None = None):
    """Another process's write, as SQLite sees it: an EXCLUSIVE lock on `path`, released after
    `seconds` (in a thread) or by the caller (`.rollback()`) when None."""
    holder = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    holder.execute("begin exclusive")
    if seconds is not None:
        threading.Timer(seconds, holder.rollback).start()
    return holder


def test_store_locked_past_the_busy_timeout_is_refused_as_locked(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").create_experiment("busy")
    before = path.read_bytes()
    monkeypatch.setattr("lenet5.store.SQLITE_BUSY_TIMEOUT_S", 0.5)  # MLflow's 20 s, shortened for the test
    holder = _hold_write_lock(path)
    try:
        line = refused_in_process([f"tracking.uri=sqlite:///{path}", "tracking.experiment=busy"], monkeypatch, capsys)
    finally:
        holder.rollback()
    assert f"{path} has been locked by another process's write for over 0.5 s" in line
    assert "cannot be read" not in line and path.read_bytes() == before


def test_store_briefly_locked_by_another_writer_is_waited_for(tmp_path):
    """A lock held for 6 s, longer than sqlite3's default 5 s wait but within MLflow's 20 s, as a
    busy second launch of a study may hold one: the check waits instead of refusing the store."""
    from lenet5.store import check_store

    path = tmp_path / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").create_experiment("busy")
    started = time.monotonic()
    _hold_write_lock(path, seconds=6.0)
    check_store(f"sqlite:///{path}", "busy")  # raises ConfigError if it gave up
    assert time.monotonic() - started >= 6.0  # it did wait for the lock


@pytest.mark.slow
def test_help_is_the_suites_own_page(tmp_path):
    """`run.py --help`: every ablation factor with every choice the schema allows, the presets,
    and where the runs go; nothing trains and nothing is recorded."""
    from lenet5.config import factor_choices

    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for key, choices in factor_choices().items():
        (line,) = [row for row in done.stdout.splitlines() if row.strip().startswith(key.removesuffix(".name") + " ")]
        assert line.split(None, 1)[1] == ", ".join(choices)
    assert "experiment: modern, paper" in done.stdout and "sweep: factorial, ofat, path" in done.stdout
    assert "tracking.uri" in done.stdout and "lenet5.study" in done.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_a_stores_artifacts_live_beside_it(tmp_path):
    from lenet5.store import artifact_location

    assert artifact_location(f"sqlite:///{tmp_path}/x.db", None) == str(tmp_path / "mlartifacts")
    assert artifact_location("sqlite:///rel/x.db", None) == str((Path.cwd() / "rel" / "mlartifacts").resolve())
    assert artifact_location(f"sqlite:///{tmp_path}/x.db", "/elsewhere") == "/elsewhere"  # as asked
    assert artifact_location("http://127.0.0.1:5000", "/elsewhere") is None  # a server decides


@pytest.mark.slow
def test_a_stack_without_a_test_split_reports_each_runs_validation_error(tmp_path):
    """A stack of tuning runs (data.test=false) has no test error: each run's line gives the
    validation error it is judged by, not 'test error nan%' (the single-run engine's line:
    test_fashion_mnist.py)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    launch = ["-m", "hydra/launcher=stacked", "seed=0,1", "data.val_size=1000", "data.test=false"]
    done = run_cli(*launch, *small_overrides(store, subset=300), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "error" in line and "after 1 epochs" in line]
    assert len(lines) == 2, done.stdout[-2000:]
    client = mlflow.MlflowClient(store)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("tests").experiment_id]) if "config_hash" in r.data.tags]
    assert len(runs) == len(lines)  # the training runs, not the sweep's parent
    for run in runs:
        assert f"validation error {run.data.metrics['val_error']:.2f}%" in "\n".join(lines)
    assert not any("nan" in line for line in lines)
