"""The single-run engine: one job trained by Lightning's loop (module.py), committed every
pass (resume.PassCheckpoint), recorded as one MLflow run (recording.py)."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from .callbacks import EpochThroughput, SDLMCurvature
from .config import OptimName
from .engine import Job, use_deterministic_kernels
from .model.counts import counts_table
from .module import LeNet5Module
from .recording import job_result, outcome_line, record_outcome, record_setup
from .resume import JobClaim, PassCheckpoint, delete_checkpoints, load_checkpoint
from .tracking import TrackedRun, tracked_run

# Metrics are logged per epoch (module.py), so Lightning's per-step logging interval is moot.
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")

#: Batches between two redraws of the progress bar. Lightning's default, 1, redraws it after
#: every batch, and each redraw gathers the logged metrics for its postfix: at a batch of 4
#: that was about 6 % of a step (docs/performance.md#a-single-runs-step). Every 20th batch
#: (and the last) still moves the bar several times a second.
PROGRESS_BAR_REFRESH = 20


def make_trainer(module: LeNet5Module, logger, checkpoint: PassCheckpoint | None = None) -> L.Trainer:
    """The trainer for `module`'s passes after its `first_pass` (those a continued run has
    done); `checkpoint` (which needs a PassLogger as `logger`) commits every pass."""
    config = module.config
    use_deterministic_kernels(config.trainer.deterministic)
    # The checkpoint goes first: it must save the state from before any callback draws or logs.
    callbacks: list[L.Callback] = ([checkpoint] if checkpoint is not None else []) + [EpochThroughput()]
    if config.optim.name == OptimName.sdlm:
        optim = config.optim
        callbacks.append(SDLMCurvature(optim.curvature_samples, config.seed, optim.curvature_every, optim.curvature_gamma))
    if config.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH))
    return L.Trainer(
        max_epochs=config.trainer.max_epochs - module.first_pass,
        accelerator=config.trainer.accelerator,
        devices=config.trainer.devices,
        logger=logger,
        callbacks=callbacks,
        deterministic=None,  # set above, as the stack sets it: Lightning leaves the flags alone
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=config.trainer.progress_bar,
        num_sanity_val_steps=0,
    )


def train_alone(jobs: list[Job]) -> list[dict[str, Any]]:
    """The `engine.Engine` of Lightning's loop: each job on its own, one after another."""
    return [train_single(job) for job in jobs]


def train_single(job: Job) -> dict[str, Any]:
    """Train one job with Lightning and record it as one MLflow run. A killed run of the same
    job with a checkpoint (from either engine) is continued from its last completed pass, in
    the same MLflow run (resume.py); one that a live process trains raises JobBusy.

    Returns {"run_id", "run_name", "test_error" (%), "tracking_uri", "experiment"}.
    """
    cfg, datamodule, module, name, sweep_tags = job.cfg, job.datamodule, job.module, job.name, job.sweep_tags
    counts = counts_table(module.model)
    claim = JobClaim.for_job(cfg)
    try:
        with tracked_run(cfg, name, sweep_tags, claim) as run:
            if run.resumed is None:
                record_setup(run, cfg, datamodule, counts)
            else:
                module.continue_from(load_checkpoint(run.client, run.resumed))
                print(f"resume: run {run.run_id} from pass {module.first_pass} of {cfg.trainer.max_epochs}")
            trainer = make_trainer(module, run.lightning_logger(), PassCheckpoint(run.client, run.run_id))
            trainer.fit(module, datamodule=datamodule)
            if trainer.interrupted:
                raise KeyboardInterrupt
            test_error = record_outcome(run, cfg, module, datamodule)
    finally:
        claim.release()
    delete_checkpoints(run.client, run.run_id)

    print(
        f"\n{outcome_line(run, name, cfg, test_error)} (run {run.run_id} in experiment '{cfg.tracking.experiment}')\n"
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


