"""Resume after kill -9: real training processes, a real store, SIGKILL mid-pass."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest

from lenet5.archive import export_experiment, import_archive
from lenet5.resume import CHECKPOINT_TAG, HEARTBEAT_TAG, OWNER_TAG, PASS_TAG, STALE_HEARTBEATS, owner_alive

from .helpers import TIMING_METRICS, experiment_runs, fresh_store, launch, run_cli, short_overrides, wait_for

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

#: Metrics that measure the machine, not the training: they differ between any two runs.
def _freeze_between_writes(job: subprocess.Popen, store: str) -> None:
    """SIGSTOP `job` at a moment it holds no lock on its SQLite store. Frozen mid-write it would
    keep the store locked, and every other process, a second launch included, would wait on it."""
    path = store.removeprefix("sqlite:///")

    def frozen_outside_a_write() -> bool:
        job.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("begin exclusive")  # fails while the job holds any lock on the file
            probe.execute("rollback")
            return True
        except sqlite3.OperationalError:
            job.send_signal(signal.SIGCONT)
            return False
        finally:
            probe.close()

    wait_for(frozen_outside_a_write, what="a moment the job holds no lock on the store")


def _history(store: str, run) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient(store)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
        if key not in TIMING_METRICS
    }


def _committed_pass(store: str, experiment: str) -> int:
    runs = experiment_runs(store, experiment)
    return int(runs[0].data.tags.get(PASS_TAG, 0)) if runs else 0


@pytest.mark.slow
def test_sigkill_in_the_second_pass_resumes_to_the_uninterrupted_history(store, tmp_path):
    whole = run_cli(*short_overrides(store, "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]

    job = launch(*short_overrides(store, "killed"))
    try:
        wait_for(lambda: _committed_pass(store, "killed") >= 1, what="pass 1 to be committed")  # pass 2 has begun
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    (ghost,) = experiment_runs(store, "killed")
    committed = int(ghost.data.tags[PASS_TAG])
    assert ghost.info.status == "RUNNING" and committed < 3  # killed mid-training: the ghost a kill leaves
    # The same ghost, carried to another machine's store as files (lenet5.archive).
    archive = tmp_path / "archive"
    export_experiment(store, "killed", archive)
    elsewhere = fresh_store(tmp_path / "elsewhere")
    import_archive(elsewhere, archive)

    again = run_cli(*short_overrides(store, "killed"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume: run {ghost.info.run_id} from pass {committed} of 3" in again.stdout

    (resumed,) = experiment_runs(store, "killed")  # the same run, not a second one
    (reference,) = experiment_runs(store, "whole")
    assert resumed.info.run_id == ghost.info.run_id and resumed.info.status == "FINISHED"
    history, expected = _history(store, resumed), _history(store, reference)
    assert history == expected  # every value at every pass, to the last digit
    assert [step for step, _ in history["test_error"]] == [1, 2, 3]  # each pass logged once
    # Checkpoints are gone once FINISHED; the network stays as the run's model.
    client = mlflow.MlflowClient(store)
    assert "checkpoints" not in {a.path for a in client.list_artifacts(resumed.info.run_id)}
    assert "model" in {m.name for m in client.search_logged_models([resumed.info.experiment_id])}

    # Continued in the importing store, it ends as the uninterrupted run did.
    carried = run_cli(*short_overrides(elsewhere, "killed"))
    assert carried.returncode == 0, carried.stderr[-3000:]
    (imported,) = experiment_runs(elsewhere, "killed")
    assert f"resume: run {imported.info.run_id} from pass {committed} of 3" in carried.stdout
    assert imported.info.status == "FINISHED" and _history(elsewhere, imported) == expected


@pytest.mark.slow
def test_a_second_launch_of_a_running_job_is_refused_and_a_death_in_pass_one_leaves_no_ghost(store):
    job = launch(*short_overrides(store, "busy", passes=1))
    try:
        wait_for(lambda: experiment_runs(store, "busy"), what="the run to be created")
        _freeze_between_writes(job, store)  # frozen in pass 1, job lock held: "still training", however fast the machine
        second = run_cli(*short_overrides(store, "busy", passes=1))
        assert second.returncode == 2
        (line,) = second.stderr.strip().splitlines()
        assert "being trained by" in line and f":{job.pid}:" in line
    finally:
        job.send_signal(signal.SIGKILL)  # in pass 1: before any checkpoint
        job.wait()
    (ghost,) = experiment_runs(store, "busy")
    assert ghost.info.status == "RUNNING" and CHECKPOINT_TAG not in ghost.data.tags

    again = run_cli(*short_overrides(store, "busy", passes=1))
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = {r.info.run_id: r.info.status for r in experiment_runs(store, "busy")}
    assert statuses.pop(ghost.info.run_id) == "KILLED"  # not left RUNNING
    assert list(statuses.values()) == ["FINISHED"]  # the job ran again, in a run of its own


def test_heartbeat_rule_for_owners_on_other_machines(store):
    """What a server store has to go by: an owner elsewhere is alive while its heartbeat is
    fresher than STALE_HEARTBEATS intervals; on this host a dead pid is dead at once."""
    client = mlflow.MlflowClient(store)
    experiment_id = client.create_experiment("heartbeat")
    now = time.time()

    def run_with(owner: str, beat: float | None):
        tags = {OWNER_TAG: owner} | ({HEARTBEAT_TAG: str(int(beat))} if beat is not None else {})
        return client.get_run(client.create_run(experiment_id, tags=tags).info.run_id)

    elsewhere = "node-that-is-not-this-one:4242:abcd"
    assert owner_alive(run_with(elsewhere, now - 10), heartbeat_s=30, now=now)
    assert not owner_alive(run_with(elsewhere, now - STALE_HEARTBEATS * 30 - 1), heartbeat_s=30, now=now)
    assert not owner_alive(run_with(elsewhere, None), heartbeat_s=30, now=now)
    here = socket.gethostname()
    assert owner_alive(run_with(f"{here}:{os.getpid()}:abcd", now - 10), heartbeat_s=30, now=now)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not owner_alive(run_with(f"{here}:{dead.pid}:abcd", now), heartbeat_s=30, now=now)


@pytest.mark.slow
def test_submitit_sweep_loses_nothing_and_a_killed_job_resumes_on_rerun(tmp_path):
    """hydra/launcher=submitit_local: each job in its own process, as on SLURM (submitit_slurm
    runs the same code). One job is killed -9 in its second pass; the same command again
    skips the finished job and continues the killed one in its own run."""
    store = fresh_store(tmp_path)
    command = ["-m", "hydra/launcher=submitit_local", "seed=0,1", *short_overrides(store, "submitit", passes=3, subset=300),
               f"hydra.sweep.dir={tmp_path / 'multirun'}"]  # fmt: skip

    def child(seed: int):
        return next((r for r in experiment_runs(store, "submitit") if r.data.tags.get("seed") == str(seed)), None)

    sweep = launch(*command)
    victim = wait_for(lambda: (r := child(1)) is not None and int(r.data.tags.get(PASS_TAG, 0)) >= 1 and r, what="job seed=1 to commit pass 1")
    os.kill(int(victim.data.tags[OWNER_TAG].split(":")[1]), signal.SIGKILL)  # the job's own process
    sweep.communicate(timeout=300)
    ghost = child(1)
    assert ghost.info.status == "RUNNING" and int(ghost.data.tags[PASS_TAG]) < 3

    again = run_cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = experiment_runs(store, "submitit")
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if "config_hash" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2  # nothing duplicated
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)  # nothing lost
    assert child(1).info.run_id == ghost.info.run_id
    client = mlflow.MlflowClient(store)
    assert [m.step for m in client.get_metric_history(ghost.info.run_id, "test_error")] == [1, 2, 3]
