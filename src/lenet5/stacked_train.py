"""Jobs of one stack (grouping.py) trained in one process and recorded as one MLflow run each.

Each run gets what `train.train` records for a single run: the config as params, the dataset
inputs, the layer table, the per-pass metrics under the same names and steps (`train_loss`,
`train_error`, `lr`, `test_error`/`val_error`, `epoch_time_s`, `train_images_per_s`, SDLM's
`sdlm/*` telemetry and step histograms), the test artifacts and the trained network, the
same tags (config hash, ablation factors, sweep parent), plus `stack.size` and `stack.id`
(which runs trained together). Differences: `epoch_time_s` is the time of the stack's pass
and `train_images_per_s` each model's own images over it; no per-pass checkpoint is written
(so no `checkpoint_s`).

Resume: a job that already FINISHED is skipped (in a sweep, as `train.train` does); a stack
that was killed is trained again from scratch by the next launch, in new runs (the killed
runs are marked KILLED); the jobs of a stack have no per-pass checkpoints to continue from.
A model whose loss becomes NaN ends FAILED alone; the others train on.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import torch

from .config import ConfigError, select
from .grouping import stack_key
from .model.counts import counts_table
from .presets import preset_factors
from .resume import JobBusy, JobClaim
from .stacked import StackedTraining
from .tracking import TrackedRun, config_hash, end_run, open_run, run_name


def training_device(cfg: Any) -> torch.device:
    """The device `trainer.accelerator` names (auto: a CUDA GPU when present, else the CPU)."""
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def train_stack(cfgs: list[Any]) -> list[dict[str, Any]]:
    """Train the jobs `cfgs` (stackable: equal `grouping.stack_key`) side by side; one result
    per job, as `train.train` returns it (a job another live process trains, and one whose
    training failed, gets test_error nan)."""
    from .train import prepare, sweep_membership, train

    keys = {stack_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ConfigError(f"these {len(cfgs)} jobs differ in more than seed and optimizer numbers and cannot train as one stack")
    prepared = [prepare(c, check_data=i == 0, check_tracking=i == 0) for i, c in enumerate(cfgs)]
    results: list[dict[str, Any] | None] = [None] * len(cfgs)
    todo = []
    for i, (cfg, (_, module)) in enumerate(zip(cfgs, prepared)):
        name = run_name(cfg, preset_factors(str(cfg.experiment)))
        done, sweep_tags = sweep_membership(cfg, name)
        if done is not None:
            results[i] = done
        else:
            todo.append((i, name, sweep_tags))
    if len(todo) == 1:  # a stack of one is a single run: the ordinary path, resume included
        (i, _, _), = todo
        results[i] = train(cfgs[i])
    elif todo:
        for i, result in _train_members(cfgs, prepared, todo).items():
            results[i] = result
    return results  # type: ignore[return-value]


def _train_members(cfgs, prepared, todo) -> dict[int, dict[str, Any]]:
    from .train import _result, log_distortions, log_network, log_test_artifacts, record_setup

    first_cfg = cfgs[todo[0][0]]
    device = training_device(first_cfg)
    if first_cfg.trainer.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as train.make_trainer: deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)  # as the single path's Trainer(deterministic="warn")
    datamodule = prepared[todo[0][0]][0]
    datamodule.setup()
    datamodule.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in datamodule.splits.items()}
    stack_tags = {"stack.size": str(len(todo)), "stack.id": uuid.uuid4().hex[:10]}
    results: dict[int, dict[str, Any]] = {}
    members: list[tuple[int, str, TrackedRun, JobClaim]] = []
    try:
        for i, name, sweep_tags in todo:
            cfg = cfgs[i]
            try:
                claim = JobClaim(str(cfg.tracking.uri), str(cfg.tracking.experiment), config_hash(cfg), cfg.tracking.heartbeat_s)
                run = open_run(cfg, name, {**sweep_tags, **stack_tags}, claim, resume=False)
            except JobBusy as err:
                print(f"error: {' '.join(str(err).split())}")
                results[i] = _result("", name, float("nan"), cfg)
                continue
            members.append((i, name, run, claim))
            record_setup(run, cfg, datamodule, counts_table(prepared[i][1].model))
        print(f"stack of {len(members)}: {', '.join(name for _, name, _, _ in members)}")
        live = _train(cfgs, prepared, datamodule, device, members)
        for k, (i, name, run, _) in enumerate(members):
            if k not in live:
                results[i] = _result(run.run_id, name, float("nan"), cfgs[i])
                continue
            cfg, module = cfgs[i], prepared[i][1]
            try:
                test_error = log_test_artifacts(run, cfg, module, datamodule) if cfg.data.test else float("nan")
                if select(cfg, "data.augment") == "paper":
                    log_distortions(run, datamodule)
                log_network(run, module, datamodule)
            except Exception as err:
                end_run(run, err)
                results[i] = _result(run.run_id, name, float("nan"), cfg)
                continue
            end_run(run)
            results[i] = _result(run.run_id, name, test_error, cfg)
            print(f"{name}: test error {test_error:.2f}% after {cfg.trainer.max_epochs} epochs (run {run.run_id})")
    except BaseException as err:
        for i, _, run, _ in members:
            if i not in results:
                end_run(run, err)
        raise
    finally:
        for _, _, _, claim in members:
            claim.release()
    return results


def _train(cfgs, prepared, datamodule, device, members) -> set[int]:
    """Run the stack's passes, logging each member's metrics at each pass; the members (their
    index in `members`) that trained to the end. A member whose loss became NaN ends FAILED."""
    import matplotlib.pyplot as plt

    from .callbacks import step_telemetry
    from .plots import sdlm_steps_figure
    from .sdlm import PAPER_PASS1_STEPS

    order = [i for i, *_ in members]
    training = StackedTraining([cfgs[i] for i in order], [prepared[i][1] for i in order], datamodule, device)
    live = set(range(len(members)))
    for result in training.passes():
        for k in sorted(live):
            run = members[k][2]
            logger = run.lightning_logger()
            if result.sdlm_steps is not None:
                steps = result.sdlm_steps[k]
                logger.log_metrics(step_telemetry(steps), step=result.number)
                if result.number in (1, training.max_epochs):
                    figure = sdlm_steps_figure({layer: s for layer, (s, _) in steps.items()}, result.number, PAPER_PASS1_STEPS)
                    run.log_figure(figure, f"sdlm_steps_pass{result.number:02d}.png")
                    plt.close(figure)
            metrics = result.metrics[k]
            if not torch.isfinite(torch.tensor(metrics["train_loss"])):
                logger.commit([])
                end_run(run, FloatingPointError(f"training loss became {metrics['train_loss']} in epoch {result.number}"))
                live.discard(k)
                continue
            logger.log_metrics(metrics, step=result.number)
            logger.commit([])
    training.write_back()
    return live
