"""One training job: validate the config, train, evaluate, record everything in MLflow."""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import multiclass_confusion_matrix

from .callbacks import EpochThroughput, SDLMCurvature
from .config import select
from .data import MNISTDataModule
from .distortions import distort
from .model.counts import counts_table
from .model.lenet5 import CLASSES
from .module import LeNet5Module
from .plots import confusion_matrix_figure, distortions_figure, misclassified_figure
from .presets import preset_factors
from .provenance import mnist_inputs
from .resume import (
    PASS_TAG, STACK_MEMBER_SUFFIX, JobClaim, PassCheckpoint, delete_checkpoints, download_checkpoint, pending_checkpoint,
)  # fmt: skip
from .sweep import find_finished, reuse_finished, sweep_context
from .store import check_store
from .identity import config_hash, flatten_config, run_name
from .tracking import TrackedRun, tracked_run
from .validate import check_config


def prepare(cfg: Any, check_data: bool = True, check_tracking: bool = True) -> tuple[MNISTDataModule, LeNet5Module]:
    """Everything that can reject a config (ConfigError), run before anything is recorded or trained.

    `check_data` hashes the MNIST files, `check_tracking` probes the MLflow store; a caller
    checking many jobs of one sweep does each once.
    """
    check_config(cfg)
    if check_tracking:
        check_store(str(cfg.tracking.uri), str(cfg.tracking.experiment))
    datamodule = MNISTDataModule(cfg.data, seed=cfg.seed)
    if check_data:
        datamodule.check()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LeNet5Module(cfg, datamodule.input_size, datamodule.eval_split_names)
    return datamodule, module


# Metrics are logged per epoch (module.py), so Lightning's per-step logging interval is moot.
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def make_trainer(cfg: Any, logger, checkpoint: PassCheckpoint | None = None) -> L.Trainer:
    """The trainer for `cfg`; `checkpoint` (which needs a PassLogger as `logger`) commits every pass."""
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic cuBLAS
    # The checkpoint goes first: it must save the state from before any callback draws or logs.
    callbacks: list[L.Callback] = ([checkpoint] if checkpoint is not None else []) + [EpochThroughput()]
    if select(cfg, "optim.name") == "sdlm":
        optim = cfg.optim
        callbacks.append(SDLMCurvature(optim.curvature_samples, cfg.seed, optim.curvature_every, optim.curvature_gamma))
    return L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        logger=logger,
        callbacks=callbacks,
        # "warn": deterministic kernels wherever PyTorch has them (all of them on the CPU),
        # a warning rather than a crash for the few GPU ops that have none.
        deterministic="warn" if cfg.trainer.deterministic else False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.trainer.progress_bar,
        num_sanity_val_steps=0,
    )


@torch.no_grad()
def evaluate_test_set(module: LeNet5Module, datamodule: MNISTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, labels) on the test split, each (N,)."""
    module.eval()
    predictions, labels = [], []
    for images, batch_labels in datamodule.eval_batches("test"):
        images = images.to(module.device)
        predictions.append(module.model.predict(module.model(images)).cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(predictions), torch.cat(labels)


def log_test_artifacts(run: TrackedRun, cfg: Any, module: LeNet5Module, datamodule: MNISTDataModule) -> float:
    """Confusion matrix and misclassified-digit grid; returns the final test error (%)."""
    predictions, labels = evaluate_test_set(module, datamodule)
    wrong = (predictions != labels).nonzero().squeeze(1)
    test_error = 100.0 * len(wrong) / len(labels)
    matrix = multiclass_confusion_matrix(predictions, labels, CLASSES)
    shown = wrong[: cfg.tracking.misclassified_shown]
    test_images = datamodule.splits["test"][0]
    figures = {
        "confusion_matrix.png": confusion_matrix_figure(matrix, f"{run.name}: test error {test_error:.2f}%"),
        "misclassified_test_digits.png": misclassified_figure(
            test_images[shown.to(test_images.device)], labels[shown], predictions[shown]
        ),
    }
    for name, figure in figures.items():
        run.log_figure(figure, name)
        plt.close(figure)
    return test_error


def log_distortions(run: TrackedRun, datamodule: MNISTDataModule, rows: int = 6) -> None:
    """A grid of the first training images and their fixed distorted copies."""
    batches = datamodule.train_dataloader()
    n, copies = len(batches.labels), min(batches.copies, 9)
    originals = batches.images[:rows]
    rows_of = torch.arange(rows, device=batches.transforms.device)
    distorted = torch.stack(
        [distort(originals, batches.transforms[c * n + rows_of], batches.background) for c in range(copies)], 1
    )
    figure = distortions_figure(originals, distorted)
    run.log_figure(figure, "distortions.png")
    plt.close(figure)


def log_network(run: TrackedRun, module: LeNet5Module, datamodule: MNISTDataModule) -> None:
    """The trained network as the run's MLflow model, on the CPU (loadable without a GPU),
    with the first test image, preprocessed, as its input example ((1, 1, S, S) float32)."""
    network = copy.deepcopy(module.model).cpu().eval()
    example = datamodule.splits["test" if "test" in datamodule.splits else "val"][0][:1].cpu().numpy()
    run.log_model(network, example)


def record_setup(run: TrackedRun, cfg: Any, datamodule: MNISTDataModule, counts) -> None:
    """What a new run records before training: config as params and YAML, dataset inputs, layer table."""
    run.log_params(flatten_config(cfg))
    run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    run.log_inputs(mnist_inputs(datamodule.raw_folder, datamodule.split_rows(), datamodule.dataset))
    run.log_text(counts.to_csv(index=False), "model_layers.csv")
    run.log_text(counts.to_markdown(index=False), "model_layers.md")
    total = counts.iloc[-1]
    run.log_metric("model_trainable_params", total.trainable_params)
    run.log_metric("model_connections", total.connections)


def sweep_membership(cfg: Any, name: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """In a multirun: (the result of a FINISHED run of this job, which the sweep reuses instead
    of training it again, or None; the tags that make a new run the sweep's child). Outside
    one: (None, {})."""
    sweep = sweep_context()
    if sweep is None:
        return None, {}
    if cfg.tracking.skip_finished:
        done = find_finished(cfg.tracking.uri, cfg.tracking.experiment, config_hash(cfg))
        if done is not None:
            print(f"skip: {name} already FINISHED as run {done.info.run_id}")
            reuse_finished(sweep, done)
            return job_result(done.info.run_id, name, done.data.metrics.get("test_error", float("nan")), cfg), {}
    if sweep["tracking_uri"] != str(cfg.tracking.uri):
        return None, {}
    return None, {"mlflow.parentRunId": sweep["parent_run_id"], "sweep_id": sweep["sweep_id"]}


def train(cfg: Any) -> dict[str, Any]:
    """Train the variant `cfg` describes and record it as one MLflow run.

    A run of the same config and seed that was killed (or whose process died) is continued
    from its last completed pass, in the same MLflow run (resume.py); one that a live process
    trains raises JobBusy. A run killed while training in a stack holds a stack member's
    checkpoint, not Lightning's: it continues as a stack of one (stacked_train.py).

    Returns {"run_id", "run_name", "test_error" (%), "tracking_uri", "experiment"}.
    """
    datamodule, module = prepare(cfg)
    counts = counts_table(module.model)
    name = run_name(cfg, preset_factors(str(cfg.experiment)))
    print(f"{name}\n{counts.to_string(index=False)}")

    done, sweep_tags = sweep_membership(cfg, name)
    if done is not None:
        return done
    pending = pending_checkpoint(cfg)
    if pending is not None and pending.endswith(STACK_MEMBER_SUFFIX):
        from .stacked_train import train_stack

        return train_stack([cfg])[0]  # killed in a stack: it continues from its stack checkpoint, as a stack of one

    claim = JobClaim(str(cfg.tracking.uri), str(cfg.tracking.experiment), config_hash(cfg), cfg.tracking.heartbeat_s)
    try:
        with tracked_run(cfg, name, sweep_tags, claim) as run, tempfile.TemporaryDirectory() as scratch:
            if run.resumed is None:
                record_setup(run, cfg, datamodule, counts)
                committed, ckpt_path = 0, None
            else:
                committed = int(run.resumed.data.tags[PASS_TAG])
                ckpt_path = download_checkpoint(run.client, run.resumed, scratch)
                print(f"resume: run {run.run_id} from pass {committed} of {cfg.trainer.max_epochs}")

            trainer = make_trainer(cfg, run.lightning_logger(), PassCheckpoint(run.client, run.run_id, committed))
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
            if trainer.interrupted:
                raise KeyboardInterrupt
            # data.test=false (a tuning run): no test split exists, so no test number is made.
            test_error = log_test_artifacts(run, cfg, module, datamodule) if cfg.data.test else float("nan")
            if select(cfg, "data.augment") == "paper":
                log_distortions(run, datamodule)
            log_network(run, module, datamodule)
    finally:
        claim.release()
    delete_checkpoints(run.client, run.run_id)

    print(
        f"\n{name}: test error {test_error:.2f}% after {cfg.trainer.max_epochs} epochs "
        f"(run {run.run_id} in experiment '{cfg.tracking.experiment}')\n"
        f"browse all runs: mlflow ui --backend-store-uri {cfg.tracking.uri}, then open\n"
        f"  {ui_address(cfg, run)}"
    )
    return job_result(run.run_id, name, test_error, cfg)


def ui_address(cfg: Any, run: TrackedRun) -> str:
    """The run's page in the MLflow UI, on its model-training view: MLflow 3.17's UI opens on a
    GenAI overview in a new browser whatever the experiment's kind tag says, unless asked."""
    uri = str(cfg.tracking.uri)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    experiment_id = run.client.get_run(run.run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment_id}/runs/{run.run_id}?workflowType=machine_learning"


def job_result(run_id: str, name: str, test_error: float, cfg: Any) -> dict[str, Any]:
    """What `train` returns for a job (and `stacked_train.train_stack` for each of a stack's):
    its run, its test error (%), and where the run is recorded."""
    return {
        "run_id": run_id,
        "run_name": name,
        "test_error": test_error,
        "tracking_uri": str(cfg.tracking.uri),
        "experiment": str(cfg.tracking.experiment),
    }


