"""What a finished run and a study's stage parents leave in the store for the MLflow UI: no tag
naming a deleted checkpoint, the final metrics linked to the logged model, the stage parents
tagged with their variant (docs/studies.md#comparing-a-studys-variants-in-the-mlflow-ui). Fast:
real SQLite stores, no training, no browser (benchmarks/ui_recipe.py checks the UI itself)."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
from mlflow.entities import RunTag

from lenet5.resume import CHECKPOINT_TAG, PASS_TAG, delete_checkpoints
from lenet5.study import Study
from lenet5.tracking import TrackedRun

from .helpers import fresh_store


def _client(tmp_path):
    store = fresh_store(tmp_path)
    client = mlflow.MlflowClient(store)
    return store, client, client.create_experiment("records", artifact_location=(tmp_path / "artifacts").as_uri())


def test_a_finished_runs_tags_name_no_deleted_checkpoint(tmp_path):
    _, client, experiment_id = _client(tmp_path)
    run_id = client.create_run(experiment_id).info.run_id
    slot = tmp_path / "slot1.pt"
    slot.write_bytes(b"state")
    client.log_artifact(run_id, str(slot), "checkpoints")
    client.log_batch(run_id, tags=[RunTag(CHECKPOINT_TAG, "checkpoints/slot1.pt"), RunTag(PASS_TAG, "2")])
    client.set_terminated(run_id, "FINISHED")
    delete_checkpoints(client, run_id)
    run = client.get_run(run_id)
    assert "checkpoints" not in {a.path for a in client.list_artifacts(run_id)}
    assert CHECKPOINT_TAG not in run.data.tags and run.data.tags[PASS_TAG] == "2"  # the passes it committed stay
    delete_checkpoints(client, run_id)  # again: nothing left to remove, no error


def test_link_metrics_links_the_last_value_without_a_second_point(tmp_path):
    store, client, experiment_id = _client(tmp_path)
    run_id = client.create_run(experiment_id).info.run_id
    for step, value in [(1, 9.0), (2, 4.5)]:
        client.log_metric(run_id, "test_error", value, timestamp=1000 + step, step=step)
    client.log_metric(run_id, "model_trainable_params", 60000, timestamp=1000, step=0)
    model_id = client.create_logged_model(experiment_id, name="model", source_run_id=run_id).model_id
    tracked = TrackedRun(client, run_id, "records", store, "a run")
    tracked.link_metrics(model_id, ("test_error", "model_trainable_params", "not_logged"))
    linked = {(m.key, m.step, m.value) for m in client.get_logged_model(model_id).metrics}
    assert linked == {("test_error", 2, 4.5), ("model_trainable_params", 0, 60000.0)}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "test_error")] == [(1, 9.0), (2, 4.5)]
    assert len(client.get_metric_history(run_id, "model_trainable_params")) == 1


def test_stage_parents_get_their_variants_tag_and_plain_sweep_parents_do_not(tmp_path):
    _, client, experiment_id = _client(tmp_path)
    study_parent = client.create_run(experiment_id).info.run_id
    stage = client.create_run(experiment_id, tags={"stage": "final", "mlflow.parentRunId": study_parent}).info.run_id
    plain = client.create_run(experiment_id, tags={"sweep.parent": "true"}).info.run_id  # may hold several variants
    runs = [
        client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}) for parent in (stage, stage, plain, study_parent)
    ] + [client.create_run(experiment_id)]  # a run of no sweep
    jobs = [SimpleNamespace(run=run) for run in runs] + [SimpleNamespace(run=None)]  # and a job not in the store
    study = SimpleNamespace(client=client, parent_run_id=study_parent)
    Study.tag_parents(study, jobs, SimpleNamespace(label="paper pool=max"))
    assert client.get_run(stage).data.tags["study.variant"] == "paper pool=max"
    assert "study.variant" not in client.get_run(plain).data.tags
    assert "study.variant" not in client.get_run(study_parent).data.tags
