"""A training job from its config to its MLflow run: the checks that can refuse it, a sweep's
reuse of a finished run, and the engine that trains it, Lightning's loop for a single job
(train.py) or the stack (stacked_train.py). The two engines never call each other; they
share the rules of training (engine.py), the checkpoint format (checkpoint.py), so a job
killed in one continues in either, and what a run records (recording.py)."""

from __future__ import annotations

from typing import Any

import lightning as L

from .config import ConfigError, as_config
from .data import MNISTDataModule
from .engine import Engine, Job
from .grouping import stack_key
from .identity import config_hash, run_name
from .model.counts import counts_table
from .module import LeNet5Module
from .presets import preset_factors
from .recording import job_result
from .stacked_train import train_stacked
from .store import check_store
from .sweep import find_finished, reuse_finished, sweep_context
from .train import train_alone
from .validate import check_config


def prepare(cfg: Any, check_data: bool = True, check_tracking: bool = True) -> tuple[MNISTDataModule, LeNet5Module]:
    """Everything that can reject a config (ConfigError), run before anything is recorded or trained.

    `check_data` hashes the MNIST files, `check_tracking` probes the MLflow store; a caller
    checking many jobs of one sweep does each once.
    """
    check_config(cfg)
    if check_tracking:
        check_store(str(cfg.tracking.uri), str(cfg.tracking.experiment))
    config = as_config(cfg)
    datamodule = MNISTDataModule(config.data, seed=config.seed)
    if check_data:
        datamodule.check()
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = LeNet5Module(config, datamodule.input_size, datamodule.eval_split_names)
    return datamodule, module


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
    """Train the variant `cfg` describes and record it as one MLflow run (continuing a
    killed run of it, whichever engine trained it), or return the FINISHED run a sweep reuses.

    Returns {"run_id", "run_name", "test_error" (%), "tracking_uri", "experiment"}.
    """
    datamodule, module = prepare(cfg)
    name = run_name(cfg, preset_factors(str(cfg.experiment)))
    print(f"{name}\n{counts_table(module.model).to_string(index=False)}")
    done, sweep_tags = sweep_membership(cfg, name)
    if done is not None:
        return done
    return train_alone([Job(cfg, datamodule, module, name, sweep_tags)])[0]


def train_stack(cfgs: list[Any]) -> list[dict[str, Any]]:
    """Train the jobs `cfgs` (stackable: equal `grouping.stack_key`) side by side; one result
    per job, as `train` returns it (a job another live process trains, and one whose
    training failed, gets test_error nan)."""
    keys = {stack_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ConfigError(f"these {len(cfgs)} jobs differ in more than seed and optimizer numbers and cannot train as one stack")
    prepared = [prepare(c, check_data=i == 0, check_tracking=i == 0) for i, c in enumerate(cfgs)]
    results: list[dict[str, Any] | None] = [None] * len(cfgs)
    todo: dict[int, Job] = {}
    for i, (cfg, (datamodule, module)) in enumerate(zip(cfgs, prepared)):
        name = run_name(cfg, preset_factors(str(cfg.experiment)))
        done, sweep_tags = sweep_membership(cfg, name)
        if done is not None:
            results[i] = done
        else:
            todo[i] = Job(cfg, datamodule, module, name, sweep_tags)
    engine: Engine = train_alone if len(todo) == 1 else train_stacked  # a stack of one is a single run
    if todo:
        for i, result in zip(todo, engine(list(todo.values()))):
            results[i] = result
    return results  # type: ignore[return-value]
