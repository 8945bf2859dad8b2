"""What a training engine is, and the rules every engine follows, written once.

Two engines implement `Engine`: Lightning's loop, one job after another (`train.train_alone`),
and the stack, K jobs side by side (`stacked_train.train_stacked`). `jobs.py` picks one; they
never call each other. What they share, each in one place: the device and deterministic
kernels (here), the loss reduction and the NaN stop (`losses.reduce_loss`, `losses.check_loss_finite`),
the job claim (`resume.JobClaim.for_job`), the per-pass commit (`resume.commit_pass`), the
checkpoint format (checkpoint.py) and what a run records (recording.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from omegaconf import DictConfig

from .config import TrainerConfig
from .data import MNISTDataModule
from .module import LeNet5Module


@dataclass
class Job:
    """One job ready to train (`jobs.prepare` built its data and model)."""

    cfg: DictConfig  # as composed: what the run records (params, tags, config hash)
    datamodule: MNISTDataModule
    module: LeNet5Module  # holds the typed config (`module.config`) and the initial weights
    name: str  # the run's name
    sweep_tags: dict[str, str]  # what makes the run a sweep's child ({} outside a sweep)


class Engine(Protocol):
    def __call__(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Train `jobs`, each recorded as its own MLflow run (a killed run of a job continued
        from its checkpoint); one result per job, in order: {"run_id", "run_name", "test_error"
        (%), "tracking_uri", "experiment"}. A job that another live process trains raises
        `resume.JobBusy` in Lightning's loop; the stack trains the others and gives that job,
        and one whose training failed, test_error nan."""
        ...


def training_device(trainer: TrainerConfig) -> torch.device:
    """The device `trainer.accelerator` names (auto: a CUDA GPU when present, else the CPU)."""
    accelerator = str(trainer.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def use_deterministic_kernels(enabled: bool) -> None:
    """`trainer.deterministic`: deterministic kernels wherever PyTorch has them (all of them on
    the CPU), a warning rather than a crash for the few GPU ops that have none.

    What Lightning's `Trainer(deterministic="warn")` sets, done here so that the stack, which
    has no Trainer, sets the same; the Trainer is then built with `deterministic=None`, which
    leaves these flags alone.
    """
    if enabled:
        # cuBLAS is deterministic only with a fixed workspace; read when CUDA starts up.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled, warn_only=True)

