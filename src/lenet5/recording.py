"""What every training run records in MLflow, whichever engine trained it (train.py's
Lightning loop or stacked_train.py's stack): its setup before training (config as params and
YAML, dataset inputs, layer table), and after it the test artifacts, the distortions, the
trained network; and the result a job returns."""

from __future__ import annotations

import copy
from typing import Any

import matplotlib.pyplot as plt
import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import multiclass_confusion_matrix

from .config import Augment
from .data import MNISTDataModule
from .distortions import distort
from .identity import flatten_config
from .model.lenet5 import CLASSES
from .module import LeNet5Module
from .figures import confusion_matrix_figure, distortions_figure, misclassified_figure
from .provenance import mnist_inputs
from .tracking import TrackedRun


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


#: Metrics a run logs once, at step 0, before training (record_setup).
SIZE_METRICS = ("model_trainable_params", "model_connections")


def log_network(run: TrackedRun, module: LeNet5Module, datamodule: MNISTDataModule, passes: int) -> None:
    """The trained network as the run's MLflow model, on the CPU (loadable without a GPU),
    with the first test image, preprocessed, as its input example ((1, 1, S, S) float32).
    The model is logged at step `passes`, so the metrics of its last pass (test_error,
    val_error, train_error, train_loss, ...) are linked to it, and its size metrics too."""
    network = copy.deepcopy(module.model).cpu().eval()
    example = datamodule.splits["test" if "test" in datamodule.splits else "val"][0][:1].cpu().numpy()
    run.log_model(network, example, step=passes, link=SIZE_METRICS)


def record_setup(run: TrackedRun, cfg: Any, datamodule: MNISTDataModule, counts) -> None:
    """What a new run records before training: config as params and YAML, dataset inputs, layer table."""
    run.log_params(flatten_config(cfg))
    run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    run.log_inputs(mnist_inputs(datamodule.raw_folder, datamodule.split_rows(), datamodule.cfg.dataset))
    run.log_text(counts.to_csv(index=False), "model_layers.csv")
    run.log_text(counts.to_markdown(index=False), "model_layers.md")
    total = counts.iloc[-1]
    run.log_metric(SIZE_METRICS[0], total.trainable_params)
    run.log_metric(SIZE_METRICS[1], total.connections)


def record_outcome(run: TrackedRun, cfg: Any, module: LeNet5Module, datamodule: MNISTDataModule) -> float:
    """Everything a trained run records: the test artifacts and its test error (%; NaN with
    data.test=false, a tuning run, which has no test split), the distortions, the network."""
    test_error = log_test_artifacts(run, cfg, module, datamodule) if cfg.data.test else float("nan")
    if cfg.data.augment == Augment.paper:
        log_distortions(run, datamodule)
    log_network(run, module, datamodule, cfg.trainer.max_epochs)
    return test_error


def outcome_line(run: TrackedRun, name: str, cfg: Any, test_error: float) -> str:
    """The console's line for a finished run: its test error (%), or for a run without a test
    split (data.test=false, a tuning run) its last validation error (%), which it is judged by."""
    epochs = cfg.trainer.max_epochs
    if cfg.data.test:
        return f"{name}: test error {test_error:.2f}% after {epochs} epochs"
    val_error = run.client.get_run(run.run_id).data.metrics.get("val_error", float("nan"))
    return f"{name}: validation error {val_error:.2f}% after {epochs} epochs (data.test=false: no test error)"


def job_result(run_id: str, name: str, test_error: float, cfg: Any) -> dict[str, Any]:
    """What an `engine.Engine` returns for each job:
    its run, its test error (%), and where the run is recorded."""
    return {
        "run_id": run_id,
        "run_name": name,
        "test_error": test_error,
        "tracking_uri": str(cfg.tracking.uri),
        "experiment": str(cfg.tracking.experiment),
    }


