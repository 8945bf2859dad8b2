"""What one run leaves in a real MLflow store."""

from __future__ import annotations

import json
import subprocess

import mlflow
import pytest
import torch

from lenet5.config import PROJECT_DIR, as_config
from lenet5.data import MNIST_TRAIN_SIZE, MNISTDataModule
from lenet5.provenance import mnist_inputs
from lenet5.tracking import get_or_create_experiment
from lenet5.jobs import train

from .helpers import compose, fresh_store, small_overrides

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

#: The tracked run's images: what is checked is what it records, not how well it learns.
TRAIN, VAL, TEST = 600, 500, 300
FACTORS = ("pool", "activation", "activation_at", "c3", "head", "init", "loss", "optim", "preprocess")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    store = fresh_store(tmp_path_factory.mktemp('store'))
    overrides = [*small_overrides(store, experiment="tracking", subset=TRAIN, test_subset=TEST, passes=2), f"data.val_size={VAL}"]
    cfg = compose("model.pool=max", "model.activation=relu", "seed=1", *overrides)
    result = train(cfg)
    client = mlflow.MlflowClient(store)
    result["cfg"] = cfg
    return result, client, client.get_run(result["run_id"])


def test_run_is_named_by_its_variant_and_finished(tracked):
    result, _, run = tracked
    assert run.info.run_name == "paper pool=max act=relu seed=1" == result["run_name"]
    assert run.info.status == "FINISHED"


def test_params_are_the_flattened_config(tracked):
    _, _, run = tracked
    params = run.data.params
    assert params["model.pool"] == "max" and params["model.activation"] == "relu"
    assert params["optim.name"] == "sdlm" and params["optim.mu"] == "0.02" and params["loss.name"] == "map" and params["seed"] == "1"
    assert params["trainer.max_epochs"] == "2" and params["data.val_size"] == str(VAL)


def test_tags_name_every_ablation_factor(tracked):
    _, _, run = tracked
    tags = run.data.tags
    assert {f"ablation.{f}" for f in FACTORS} | {"ablation.experiment"} <= set(tags)
    assert tags["ablation.pool"] == "max" and tags["ablation.c3"] == "table" and tags["ablation.experiment"] == "paper"
    assert len(tags["config_hash"]) == 12 and tags["config_hash"] != tags["variant_hash"]


def test_metrics_per_epoch_with_epoch_as_step(tracked):
    result, client, run = tracked
    for key in ("train_loss", "train_error", "test_error", "val_error", "epoch_time_s", "train_images_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    # Max-pooling drops S2's and S4's 12 + 32 parameters and their bias connections
    # (6x14x14 + 16x5x5 units) from the paper's 60,000 / 340,908.
    assert run.data.metrics["model_trainable_params"] == 60_000 - 44
    assert run.data.metrics["model_connections"] == 340_908 - (6 * 14 * 14 + 16 * 5 * 5)
    final = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_error")}[2]
    assert final == pytest.approx(result["test_error"], abs=1e-4)
    assert 0 <= run.data.metrics["test_error"] <= 100


def test_logged_lr_is_the_rate_each_epoch_trained_with(store):
    # The paper's per-pattern eta drops from 5e-4 to 2e-4 after pass 2.
    result = train(compose("seed=0", *small_overrides(store, subset=64, passes=3)))
    history = mlflow.MlflowClient(store).get_metric_history(result["run_id"], "lr")
    assert {m.step: m.value for m in history} == pytest.approx({1: 5e-4, 2: 5e-4, 3: 2e-4})


def test_artifacts(tracked, tmp_path):
    _, client, run = tracked
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model_layers.csv", "model_layers.md", "confusion_matrix.png", "misclassified_test_digits.png"} <= names
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "pool: max" in open(config).read()
    layers = open(client.download_artifacts(run.info.run_id, "model_layers.csv", str(tmp_path))).read()
    assert "C3,TableConv2d,16x10x10,1516,151600" in layers
    png = open(client.download_artifacts(run.info.run_id, "confusion_matrix.png", str(tmp_path)), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_loss_ends_the_run_failed_with_its_reason(store):
    with pytest.raises(FloatingPointError):
        train(compose("experiment=modern", "optim.lr=1e30", *small_overrides(store)))
    (run,) = mlflow.MlflowClient(store).search_runs([mlflow.MlflowClient(store).get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FAILED"
    assert "loss became nan" in run.data.tags["failure_reason"]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True, text=True, check=True).stdout


def test_source_tags_name_the_commit_and_whether_the_tree_was_dirty(tracked):
    _, _, run = tracked
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == _git("rev-parse", "HEAD").strip()
    assert tags["git_dirty"] == str(bool(_git("status", "--porcelain").strip())).lower()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]


def test_experiment_opens_on_the_model_training_view(tracked, tmp_path):
    _, client, run = tracked
    kind = "custom_model_development"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == kind
    # An experiment made before the suite set the tag gets it when the suite next uses it.
    old = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'old.db'}")
    experiment_id = old.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
    assert get_or_create_experiment(old, "old", None) == experiment_id
    assert old.get_experiment(experiment_id).tags["mlflow.experimentKind"] == kind


def test_mnist_splits_are_logged_inputs(tracked):
    _, _, run = tracked
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    assert {d.name for d in inputs.values()} == {"mnist"}
    assert len({d.digest for d in inputs.values()}) == 3
    profiles = {context: json.loads(d.profile) for context, d in inputs.items()}
    # data.train_subset=TRAIN, data.val_size=VAL (the last VAL training images), data.test_subset=TEST
    assert profiles["training"]["num_images"] == TRAIN and profiles["training"]["rows"] == f"0:{TRAIN}"
    assert profiles["validation"]["num_images"] == VAL and profiles["validation"]["rows"] == f"{MNIST_TRAIN_SIZE - VAL}:{MNIST_TRAIN_SIZE}"
    assert profiles["test"]["num_images"] == TEST and "t10k-images-idx3-ubyte" in profiles["test"]["files"]
    assert json.loads(inputs["test"].source)["uri"].endswith("MNIST/raw")


def test_dataset_digest_follows_the_images_not_the_run(tracked, tmp_path):
    _, _, run = tracked
    raw = tmp_path / "raw"
    logged = {i.tags[0].value: i.dataset.digest for i in run.inputs.dataset_inputs}
    same = mnist_inputs(raw, {"test": (False, 0, TEST)})[0].dataset.digest
    other = mnist_inputs(raw, {"test": (False, 0, TEST - 1)})[0].dataset.digest
    assert same == logged["test"]  # another folder, same rows of the same files
    assert other != same


def test_final_network_is_logged_and_reproduces_the_test_error(tracked):
    result, _, run = tracked
    uri = f"runs:/{run.info.run_id}/model"
    mlflow.set_tracking_uri(result["tracking_uri"])
    try:
        network = mlflow.pytorch.load_model(uri)
    finally:
        mlflow.set_tracking_uri(None)
    datamodule = MNISTDataModule(as_config(result["cfg"]).data, seed=1)
    datamodule.setup()
    wrong = total = 0
    with torch.no_grad():
        for images, labels in datamodule.eval_batches("test"):
            wrong += (network.predict(network(images)) != labels).sum().item()
            total += len(labels)
    assert total == TEST
    assert 100.0 * wrong / total == result["test_error"]
    assert run.data.metrics["test_error"] == pytest.approx(100.0 * wrong / total, abs=1e-4)


def test_dataset_inputs_survive_a_parallel_job_registering_them_first(store, monkeypatch):
    """Two jobs of a sweep insert the same dataset row at once; the loser's insert fails on the
    store's unique key, and its retry must link the existing row instead of failing the run."""
    from mlflow.entities import Dataset, DatasetInput
    from mlflow.exceptions import MlflowException

    from lenet5.tracking import TrackedRun

    client = mlflow.MlflowClient(store)
    experiment_id = client.create_experiment("race")
    dataset = DatasetInput(Dataset(name="mnist", digest="abc", source_type="local", source='{"uri": "x"}'))
    winner, loser = (client.create_run(experiment_id).info.run_id for _ in range(2))
    real = mlflow.MlflowClient.log_inputs
    calls = []

    def racing(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if run_id == loser and len(calls) == 1:  # the winner writes the row while the loser is mid-insert
            real(self, winner, datasets=datasets)
            raise MlflowException("UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest")
        return real(self, run_id, datasets=datasets)

    monkeypatch.setattr(mlflow.MlflowClient, "log_inputs", racing)
    TrackedRun(client, loser, "race", store, "loser").log_inputs([dataset])
    for run_id in (winner, loser):
        (logged,) = client.get_run(run_id).inputs.dataset_inputs
        assert logged.dataset.digest == "abc"
