"""A store's runs exported as files and imported into another store (lenet5.archive), on real
SQLite stores. The training round trip (a killed run continued in the importing store) is in
test_resume.py."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag

from lenet5.archive import ORIGIN_TAG, snapshot_run, export_experiment, import_archive, main
from lenet5.resume import CHECKPOINT_TAG, PASS_TAG
from lenet5.study import runs_by_hash

from .helpers import fresh_store


def _fill(uri: str, tmp_path: Path) -> dict[str, str]:
    """A parent, a FINISHED child with metric histories, a KILLED run with a checkpoint, a
    deleted run; returns their ids."""
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "artifacts_a").as_uri())
    parent = client.create_run(experiment, run_name="sweep parent", start_time=1_000).info.run_id
    done = client.create_run(experiment, run_name="paper seed=0", start_time=2_000, tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_batch(
        done,
        metrics=[Metric("val_error", v, 2_100 + s, s) for s, v in ((1, 0.05), (2, 0.03), (3, float("nan")))],
        params=[Param("optim.lr", "0.000158"), Param("seed", "0")],
        tags=[RunTag("config_hash", "aaa"), RunTag("tune.selected_run_ids", f"{done},{parent}"), RunTag("mlflow.log-model.history", "[]")],
    )
    client.set_terminated(done, "FINISHED", end_time=3_000)
    killed = client.create_run(experiment, run_name="paper seed=1", start_time=4_000).info.run_id
    state = tmp_path / "slot1.pt"
    state.write_bytes(b"checkpoint of pass 1")
    client.log_artifact(killed, str(state), "checkpoints")
    client.log_batch(killed, tags=[RunTag("config_hash", "bbb"), RunTag(CHECKPOINT_TAG, "checkpoints/slot1.pt"), RunTag(PASS_TAG, "1")])
    client.set_terminated(killed, "KILLED", end_time=5_000)
    deleted = client.create_run(experiment, run_name="deleted").info.run_id
    client.delete_run(deleted)
    client.set_terminated(parent, "FINISHED", end_time=6_000)
    return {"parent": parent, "done": done, "killed": killed}


def _by_origin(uri: str) -> dict[str, object]:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("study").experiment_id
    return {run.data.tags.get(ORIGIN_TAG, run.info.run_id): run for run in client.search_runs([experiment])}


def test_export_then_import_recreates_every_run_and_a_second_import_adds_nothing(tmp_path):
    source, target = fresh_store(tmp_path / "a"), fresh_store(tmp_path / "b")
    ids = _fill(source, tmp_path)
    assert export_experiment(source, "study", tmp_path / "archive") == {"runs": 3, "checkpoints": 1}
    assert import_archive(target, tmp_path / "archive") == {"imported": 3, "present": 0, "checkpoints": 1}

    runs = _by_origin(target)
    assert set(runs) == {ids["parent"], ids["done"], ids["killed"]}  # the deleted run stays behind
    parent, done, killed = runs[ids["parent"]], runs[ids["done"]], runs[ids["killed"]]
    assert done.info.run_id != ids["done"]  # new ids, the first one kept as the origin
    assert (done.info.status, done.info.start_time, done.info.end_time) == ("FINISHED", 2_000, 3_000)
    assert done.info.run_name == "paper seed=0" and done.data.params == {"optim.lr": "0.000158", "seed": "0"}
    # Tags naming runs of the archive name their new ids; what did not travel is not claimed.
    assert done.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert done.data.tags["tune.selected_run_ids"] == f"{done.info.run_id},{parent.info.run_id}"
    assert "mlflow.log-model.history" not in done.data.tags
    client = mlflow.MlflowClient(target)
    history = [(m.step, m.timestamp, m.value) for m in client.get_metric_history(done.info.run_id, "val_error")]
    assert history[:2] == [(1, 2_101, 0.05), (2, 2_102, 0.03)] and history[2][2] != history[2][2]  # NaN kept
    # The killed run keeps its checkpoint where its tag points, so its next launch continues it.
    assert killed.info.status == "KILLED" and killed.data.tags[PASS_TAG] == "1"
    local = client.download_artifacts(killed.info.run_id, killed.data.tags[CHECKPOINT_TAG], str(tmp_path / "got"))
    assert Path(local).read_bytes() == b"checkpoint of pass 1"
    # The importing store's artifacts live beside it, as every new experiment's do.
    assert killed.info.artifact_uri.startswith((tmp_path / "b" / "mlartifacts").as_uri())
    # A study finds the finished run by its config hash, so it is not trained again.
    assert runs_by_hash(client, done.info.experiment_id)["aaa"].info.run_id == done.info.run_id

    assert import_archive(target, tmp_path / "archive") == {"imported": 0, "present": 3, "checkpoints": 0}
    assert len(_by_origin(target)) == 3


def test_exporting_an_imported_store_gives_the_same_archive(tmp_path):
    source, target = fresh_store(tmp_path / "a"), fresh_store(tmp_path / "b")
    _fill(source, tmp_path)
    export_experiment(source, "study", tmp_path / "first")
    import_archive(target, tmp_path / "first")
    export_experiment(target, "study", tmp_path / "second")
    first, second = sorted((tmp_path / "first").rglob("*.*")), sorted((tmp_path / "second").rglob("*.*"))
    assert [p.relative_to(tmp_path / "first") for p in first] == [p.relative_to(tmp_path / "second") for p in second]
    # Byte for byte: the tags that name other runs (mlflow.parentRunId, tune.selected_run_ids)
    # are written as origins, not as the importing store's ids, so a round trip rewrites nothing.
    for a, b in zip(first, second):
        assert filecmp.cmp(a, b, shallow=False), a.name


def test_a_run_finished_since_the_last_export_drops_its_checkpoint_and_runs_the_store_lacks_are_kept(tmp_path):
    source = fresh_store(tmp_path / "a")
    ids = _fill(source, tmp_path)
    archive = tmp_path / "archive"
    export_experiment(source, "study", archive)
    assert (archive / "checkpoints" / f"{ids['killed']}.pt").is_file()
    client = mlflow.MlflowClient(source)
    client.set_terminated(ids["killed"], "FINISHED")
    client.delete_run(ids["parent"])
    export_experiment(source, "study", archive)
    assert not (archive / "checkpoints" / f"{ids['killed']}.pt").exists()
    assert json.loads((archive / "runs" / f"{ids['killed']}.json").read_text())["status"] == "FINISHED"
    assert (archive / "runs" / f"{ids['parent']}.json").is_file()  # nothing recorded is lost


def test_the_command_refuses_a_missing_experiment_and_a_folder_that_is_no_archive(tmp_path, capsys):
    store = fresh_store(tmp_path / "a")
    assert main(["export", "--uri", store, "--experiment", "nope", "--to", str(tmp_path / "x")]) == 2
    assert main(["import", "--uri", store, "--from", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "experiment 'nope'" in errors[0] and "no runs/ folder" in errors[1]


def test_a_pass_committed_while_a_run_is_read_is_not_half_exported(tmp_path):
    """A run still training commits pass 2 (its metric and pass tag in one batch) between the
    export's first read of the run and its read of the metrics: the record is taken again, so
    its metrics and its pass tag agree and a continued run would not log pass 2 twice."""
    store = fresh_store(tmp_path / "a")
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("study")).info.run_id
    client.log_batch(run_id, metrics=[Metric("val_error", 0.5, 1, 1)], tags=[RunTag(PASS_TAG, "1")])

    class CommitsDuringTheFirstRead(mlflow.MlflowClient):
        committed = False

        def get_metric_history(self, run_id, key):
            if not self.committed:
                self.committed = True
                self.log_batch(run_id, metrics=[Metric("val_error", 0.25, 2, 2)], tags=[RunTag(PASS_TAG, "2")])
            return super().get_metric_history(run_id, key)

    record = snapshot_run(CommitsDuringTheFirstRead(store), run_id, "study", tmp_path / "unused.pt")
    assert record["tags"][PASS_TAG] == "2" and [step for step, _, _ in record["metrics"]["val_error"]] == [1, 2]


def test_a_run_past_mlflows_request_limits_travels_whole(tmp_path):
    """More metric points, params and tags than one MLflow request takes (1,000 entities, 100
    params or tags): the client splits the import's one log_batch into requests by itself."""
    source, target = fresh_store(tmp_path / "a"), fresh_store(tmp_path / "b")
    client = mlflow.MlflowClient(source)
    run_id = client.create_run(client.create_experiment("study")).info.run_id
    client.log_batch(run_id, params=[Param(f"p{i}", str(i)) for i in range(150)], tags=[RunTag(f"t{i}", str(i)) for i in range(150)])
    client.log_batch(run_id, metrics=[Metric(f"m{i % 3}", float(i), i, i) for i in range(2_500)])
    client.set_terminated(run_id, "FINISHED")
    export_experiment(source, "study", tmp_path / "archive")
    import_archive(target, tmp_path / "archive")
    (run,) = _by_origin(target).values()
    assert len(run.data.params) == 150 and {f"t{i}" for i in range(150)} <= set(run.data.tags)
    histories = [mlflow.MlflowClient(target).get_metric_history(run.info.run_id, f"m{k}") for k in range(3)]
    assert sorted(m.step for h in histories for m in h) == list(range(2_500))
