"""A Hydra launcher that trains a multirun's compatible jobs as one stacked model per group.

    python run.py -m seed=0,1,2,3 optim.lr=1e-3,2e-3 hydra/launcher=stacked hydra.launcher.models_per_process=8

Jobs whose configs differ only in `lenet5.grouping.STACKABLE_KEYS` (seed, optim.lr, ...) are
grouped, at most `models_per_process` a group, in the order Hydra lists them; each group
trains in this process as one stacked model (`lenet5.jobs.train_stack`, the stack engine `lenet5.stacked_train.train_stacked`), each job
still its own MLflow run. A job alone in its group runs the ordinary single-run path. Groups
run one after another, as Hydra's basic launcher runs jobs.

It lives in `hydra_plugins` because Hydra instantiates launchers only from there. No
`from __future__ import annotations`: Hydra's plugin scan runs this module outside
`sys.modules`, where dataclasses cannot resolve string annotations.
"""


import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.lenet5_stacked_launcher.stacked_launcher.StackedLauncher"
    #: The most models one process trains side by side (1: every job alone, as the basic launcher).
    models_per_process: int = 16
    #: The task of a group of stackable jobs (their configs -> their test errors), named rather
    #: than imported so that this plugin depends on no entry point of the suite.
    stack_task: str = "lenet5.cli.stack_task"


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="lenet5")


def job_config(sweep_config: DictConfig) -> DictConfig:
    """What the task function of a job receives: its config without the `hydra` node (as `run_job` makes it)."""
    cfg = copy.deepcopy(sweep_config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


class StackedLauncher(Launcher):
    def __init__(self, models_per_process: int = 16, stack_task: str = "lenet5.cli.stack_task") -> None:
        super().__init__()
        self.models_per_process = models_per_process
        self.stack_task = stack_task
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lenet5.grouping import partition  # deferred: it brings MLflow and Lightning, which a plugin scan need not load

        stack_task = get_method(self.stack_task)

        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        sweep_configs = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            sweep_configs.append(sweep_config)
        jobs = [job_config(c) for c in sweep_configs]
        groups = partition(jobs, self.models_per_process)
        log.info(f"Launching {len(job_overrides)} jobs locally as {len(groups)} stacks of at most {self.models_per_process} models")
        runs: List[JobReturn] = []
        for group in groups:
            for i in group:
                log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
            if len(group) == 1:
                task: Any = self.task_function
            else:
                members = [jobs[i] for i in group]
                task = lambda _cfg, members=members: stack_task(members)  # noqa: E731
            # The group runs in the first job's output folder, under its Hydra job config.
            runs.append(
                run_job(
                    hydra_context=self.hydra_context, task_function=task, config=sweep_configs[group[0]],
                    job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                )
            )  # fmt: skip
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


def register() -> None:
    """Make the launcher known to Hydra even where its plugin scan cannot list this package.

    Hydra finds plugins by walking the `hydra_plugins` namespace with pkgutil; a wheel install
    is found that way, but an editable install (what `make` does) maps this package through an
    import hook that pkgutil cannot list, so the scan misses it although it imports fine. The
    suite's entry points (`lenet5.cli.main`, `lenet5.study.main`) call this before Hydra
    composes or launches.

    `Plugins.register` is Hydra's public way to add a plugin by hand. A scan that did find the
    package imported its own copy of this class (outside `sys.modules`, see above); that copy
    is kept, so the launcher is not listed twice (`run.py --info plugins`).
    """
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    name = f"{StackedLauncher.__module__}.{StackedLauncher.__qualname__}"
    if all(f"{found.__module__}.{found.__qualname__}" != name for found in plugins.discover(Launcher)):
        plugins.register(StackedLauncher)
