"""Multiruns in real subprocesses: parent and child runs, re-runs that skip, failures, joblib, a real server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from lenet5.cli import job_overrides
from lenet5.config import PROJECT_DIR
from lenet5.identity import config_hash, flatten_config

from .helpers import compose, fresh_store, run_cli, small_overrides

SWEEP = ["-m", "model.pool=subsample,max", "model.c3=table,full", "seed=0,1"]


def sweep_overrides(store: str, experiment: str = "sweep") -> list[str]:
    return small_overrides(store, experiment=experiment, subset=300, test_subset=300)


def runs_of(store: str, experiment: str = "sweep"):
    client = mlflow.MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if "config_hash" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """2 pools x 2 C3 tables x 2 seeds, 1 epoch on 300 images, then the same command again."""
    folder = tmp_path_factory.mktemp("sweep")
    store = fresh_store(folder)
    first = run_cli(*SWEEP, *sweep_overrides(store), cwd=folder)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = runs_of(store)
    again = run_cli(*SWEEP, *sweep_overrides(store), cwd=folder)
    assert again.returncode == 0, again.stderr[-3000:]
    return store, folder, first, after_first, again


@pytest.mark.slow
def test_multirun_is_one_parent_with_every_job_as_a_child(swept):
    store, _, _, (client, parents, children), _ = swept
    (parent,) = parents
    assert len(children) == 8
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["sweep_id"] for c in children} == {parent.data.tags["sweep_id"]}
    assert len({c.data.tags["config_hash"] for c in children}) == 8
    assert len({c.data.tags["variant_hash"] for c in children}) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    assert parent.info.status == "FINISHED"
    summary = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/variants.md", "summary/factors.md", "summary/variants.csv"} <= summary


@pytest.mark.slow
def test_parent_summary_has_a_row_per_variant_with_n_equal_to_the_seeds(swept, tmp_path):
    store, _, _, (client, (parent,), _), _ = swept
    table = open(client.download_artifacts(parent.info.run_id, "summary/variants.md", str(tmp_path))).read()
    rows = [line for line in table.splitlines() if line.startswith("|") and "paper" in line]
    assert len(rows) == 4, table
    assert all("| 2 " in row or "|   2 |" in row or "| 2 |" in row for row in rows), table


@pytest.mark.slow
def test_running_the_same_sweep_again_skips_every_finished_job(swept):
    store, _, _, (_, parents_before, children_before), again = swept
    _, parents, children = runs_of(store)
    assert again.stdout.count("skip: ") == 8
    assert [p.info.run_id for p in parents] == [p.info.run_id for p in parents_before]
    assert sorted(c.info.run_id for c in children) == sorted(c.info.run_id for c in children_before)


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_is_rerun(tmp_path):
    store = fresh_store(tmp_path)
    command = ["-m", "experiment=modern", "optim.lr=0.001,1e30", *sweep_overrides(store, "fail")]
    first = run_cli(*command, cwd=tmp_path)
    assert first.returncode == 1
    assert "1 job(s) of the sweep FAILED" in first.stderr.splitlines()[-1]
    _, (parent,), children = runs_of(store, "fail")
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.failed_jobs"] == "1"

    second = run_cli(*command, cwd=tmp_path)
    assert second.returncode == 1 and second.stdout.count("skip: ") == 1  # only the finished one
    _, parents, children = runs_of(store, "fail")
    assert len(parents) == 1
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED", "FINISHED"]


@pytest.mark.slow
def test_joblib_with_two_workers_loses_and_duplicates_nothing(tmp_path):
    store = fresh_store(tmp_path)
    done = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.pool=subsample,max", "seed=0,1,2",
        *sweep_overrides(store, "joblib"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _, (parent,), children = runs_of(store, "joblib")
    assert len(children) == 6 and len({c.data.tags["config_hash"] for c in children}) == 6
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_sweep_into_a_real_mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        overrides = [o for o in sweep_overrides(uri, "served") if not o.startswith("tracking.artifact_root")]
        done = run_cli("-m", "seed=0,1", *overrides, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        client, (parent,), children = runs_of(uri, "served")
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
        assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_sweep_presets_expand_to_their_jobs():
    ofat, multirun = job_overrides(["-m", "sweep=ofat"])
    assert multirun and len(ofat) == 10 * 3 and len({tuple(j) for j in ofat}) == 30
    assert len(job_overrides(["-m", "sweep=ofat", "seed=0,1"])[0]) == 10 * 2  # the command line wins
    assert len(job_overrides(["-m", "sweep=factorial"])[0]) == 3 * 5 * 2 * 2 * 2
    assert len(job_overrides(["-m", "sweep=path", "seed=4"])[0]) == 7


def test_ofat_variants_change_one_factor_each():
    paper = compose("experiment=paper")
    factor_keys = {"model.pool", "model.activation", "model.c3", "model.init", "model.head", "loss.name", "optim.name"}
    labels = {"experiment", "variant"}
    for variant in ("pool_max", "act_relu", "act_tanh", "act_sigmoid", "c3_full", "init_default", "head_softmax_ce", "optim_sgd", "optim_adam"):
        changed = {
            k for k, v in flatten_config(compose(f"variant={variant}")).items()
            if flatten_config(paper)[k] != v and k not in labels
        }  # fmt: skip
        assert changed & factor_keys, variant
        expected_size = 2 if variant in ("head_softmax_ce",) else 1
        assert len(changed & factor_keys) == expected_size, (variant, changed)
        # An optimizer comes with its own settings (lr, momentum, schedule, SDLM's mu); nothing else moves.
        assert {k for k in changed - factor_keys if not k.startswith("optim.")} == set(), (variant, changed)
        assert variant.startswith("optim_") or not {k for k in changed if k.startswith("optim.")}, (variant, changed)


def test_path_ends_at_the_modern_preset():
    last = flatten_config(compose("variant=path_6_optim"))
    modern = flatten_config(compose("experiment=modern"))
    assert {k for k in last if last[k] != modern[k]} == {"experiment", "variant"}


def test_no_two_variant_files_compose_the_same_training_run():
    """The `variant` label is part of the config hash, so two files that set the same keys would
    be tuned and trained once per name: `path`'s first step and `ofat`'s `pool_max` were."""
    names = sorted(p.stem for p in (PROJECT_DIR / "conf" / "variant").glob("*.yaml"))
    by_content: dict[str, list[str]] = {}
    for name in names:
        cfg = compose(f"variant={name}")
        cfg.variant = "same label"  # the hash of what the file sets, apart from its name
        by_content.setdefault(config_hash(cfg), []).append(name)
    assert [group for group in by_content.values() if len(group) > 1] == []
    sweep_variants = {tuple(j) for sweep in ("ofat", "path") for j in job_overrides(["-m", f"sweep={sweep}", "seed=0"])[0]}
    hashes = {config_hash(compose(*job)) for job in sweep_variants}
    # ofat's 10 jobs and path's 7 share `none` and `pool_max`: 15 runs a seed, not 17.
    assert (len(sweep_variants), len(hashes)) == (17, 15)


@pytest.mark.slow
def test_another_sweep_reuses_finished_runs_and_counts_them(swept):
    """A different sweep sharing jobs skips them but still reports them as its own."""
    from analysis.runs import load_runs

    store, folder, _, (_, (first_parent,), _), _ = swept
    done = run_cli("-m", "model.pool=subsample", "model.c3=table", "seed=0,1,2", *sweep_overrides(store), cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("skip: ") == 2
    _, parents, children = runs_of(store)
    (second_parent,) = [p for p in parents if p.info.run_id != first_parent.info.run_id]
    reported = load_runs(store, "sweep", second_parent.data.tags["sweep_id"])
    assert sorted(reported["seed"]) == [0, 1, 2] and reported["variant"].nunique() == 1
    assert len(children) == 9  # only seed 2 was trained again
