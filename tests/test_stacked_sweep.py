"""`hydra/launcher=stacked`: a multirun's stackable jobs trained as stacks, in real subprocesses."""

from __future__ import annotations

import mlflow
import pytest

from .helpers import fresh_store, run_cli, small_overrides

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow


def children(store: str, experiment: str):
    client = mlflow.MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if r.data.tags.get("sweep.parent") == "true"], [r for r in runs if "config_hash" in r.data.tags]


@pytest.mark.slow
def test_a_stacked_sweep_records_every_job_as_a_child_and_a_rerun_skips_them(tmp_path):
    store = fresh_store(tmp_path)
    # Two pools x three seeds, two models a process: per pool a stack of seeds 0 and 1, and
    # seed 2 alone (the ordinary single-run path).
    command = [
        "-m", "hydra/launcher=stacked", "hydra.launcher.models_per_process=2", "model.pool=subsample,max", "seed=0,1,2",
        *small_overrides(store, "stacked", subset=200, test_subset=200),
    ]  # fmt: skip
    first = run_cli(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "6 jobs locally as 4 stacks" in first.stderr + first.stdout
    (parent,), runs = children(store, "stacked")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert len({r.data.tags["config_hash"] for r in runs}) == 6
    stacked = [r for r in runs if r.data.tags.get("stack.size") == "2"]
    assert sorted((r.data.tags["ablation.pool"], r.data.tags["seed"]) for r in stacked) == [
        ("max", "0"), ("max", "1"), ("subsample", "0"), ("subsample", "1")
    ]
    assert len({r.data.tags["stack.id"] for r in stacked}) == 2
    assert all("stack.size" not in r.data.tags and r.data.tags["seed"] == "2" for r in runs if r not in stacked)
    assert all(r.data.metrics["test_error"] < 60 for r in runs)  # every one learnt (chance: 90)

    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip: ") == 6
    parents, after = children(store, "stacked")
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in runs)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_models_per_process_below_one_is_one_line_before_anything_runs(value, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # not made: refused first
    done = run_cli("-m", "hydra/launcher=stacked", f"hydra.launcher.models_per_process={value}", "seed=0,1", *small_overrides(store), cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"hydra.launcher.models_per_process={value}" in line and ">= 1" in line
    assert not (tmp_path / "mlflow.db").exists()
