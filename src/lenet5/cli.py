"""`python run.py [overrides]`: the Hydra entry point.

Before Hydra starts, every job the command line asks for (one, or each of a multirun's
combinations) is composed and checked, so a bad choice, type or combination stops the
command with one line on stderr and exit code 2, before anything trains or is recorded.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from hydra_plugins.lenet5_stacked_launcher.stacked_launcher import register as register_stacked_launcher
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .adapters import hydra_args_parser, is_hydra_command, sweep_jobs
from .config import ABLATION_FACTORS, CONF_DIR, ConfigError, factor_choices
from .presets import compose_config
from .store import check_store
from .validate import check_launcher

#: Compose at most this many jobs up front; larger sweeps are checked job by job as they run.
MAX_JOBS_CHECKED_UP_FRONT = 1024


def factors_help() -> str:
    """The ablation factors as `run.py --help` lists them: one line each, key and choices."""
    # loss and optim are config groups (each brings its own settings): chosen as loss=..., optim=...
    shown = {key: key.removesuffix(".name") for key in ABLATION_FACTORS.values()}
    width = max(len(name) for name in shown.values())
    return "\n".join(f"  {shown[key]:<{width}}  {', '.join(choices)}" for key, choices in factor_choices().items())


# conf/config.yaml's hydra.help.template lists the factors through this resolver, so the help
# cannot fall behind the schema.
if not OmegaConf.has_resolver("lenet5_factors"):
    OmegaConf.register_new_resolver("lenet5_factors", factors_help)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def explain(err: BaseException, overrides: list[str]) -> str:
    """A Hydra/OmegaConf composition error as one line naming the value and the choices."""
    if isinstance(err, MissingConfigException) and err.options is not None:
        group = (err.missing_cfg_file or "").rsplit("/", 1)[0]
        given = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), err.missing_cfg_file)
        choices = ", ".join(sorted(o for o in err.options if o != "schema"))
        return f"{given} is not a choice; valid choices for {group}: {choices}"
    head = str(err).splitlines()[0] if str(err) else type(err).__name__
    if head.startswith("Ambiguous value"):
        return f"{head}: to sweep over it add -m (--multirun), to pass a list write key=[a,b]"
    cause = err.__cause__
    if "hydra.launcher." in head and "BasicLauncherConf" in str(cause):
        return f"{_one_line(head)} {str(cause).splitlines()[0]}: the default launcher has no options; add hydra/launcher=joblib"
    if cause is not None and str(cause):
        return f"{head.removeprefix('Error merging override ')}: {str(cause).splitlines()[0]}"
    return _one_line(head)


def job_overrides(argv: list[str]) -> tuple[list[list[str]], bool]:
    """The override lists of the jobs `argv` launches (hydra.* overrides left out) and whether it is a multirun."""
    args = hydra_args_parser().parse_args(argv)
    if is_hydra_command(args):
        return [], False  # Hydra's own commands: nothing trains
    parser = OverridesParser.create()
    is_job_override = lambda o: not o.get_key_element().lstrip("+~").startswith("hydra")  # noqa: E731
    parsed = [o for o in parser.parse_overrides(args.overrides) if is_job_override(o)]
    if not args.multirun:
        return [[o.input_line for o in parsed]], False
    # A sweep preset (sweep=ofat) lists its sweeps in hydra.sweeper.params; the command line
    # comes after them and wins for the same key, as in Hydra's BasicSweeper.
    primary = compose_config([o.input_line for o in parsed if not o.is_sweep_override()], with_hydra=True)
    preset_params = [f"{k}={v}" for k, v in (primary.hydra.sweeper.params or {}).items()]
    return sweep_jobs(parser.parse_overrides(preset_params) + parsed), True


def command_hydra_config(argv: list[str]) -> Any | None:
    """The `hydra` node (launcher, sweeper, ...) `argv` composes, hydra.* overrides included;
    None for Hydra's own commands (--cfg, --help, ...)."""
    args = hydra_args_parser().parse_args(argv)
    if is_hydra_command(args):
        return None
    parsed = OverridesParser.create().parse_overrides(args.overrides)
    return compose_config([o.input_line for o in parsed if not o.is_sweep_override()], with_hydra=True).hydra


def check_command_line(argv: list[str]) -> None:
    """Compose and check each job `argv` would run; raise ConfigError (one line) on the first bad one."""
    try:
        jobs, _ = job_overrides(argv)
        hydra_cfg = command_hydra_config(argv)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain(err, [])) from None
    if hydra_cfg is not None:
        check_launcher(hydra_cfg)
    configs = []
    for overrides in jobs[:MAX_JOBS_CHECKED_UP_FRONT]:
        try:
            configs.append(compose_config(overrides))
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(explain(err, overrides)) from None
    # Stores first: their check needs no torch, so a bad one is refused in a second or two.
    for uri, experiment in dict.fromkeys((str(c.tracking.uri), str(c.tracking.experiment)) for c in configs):
        check_store(uri, experiment)
    from .jobs import prepare  # torch and Lightning: only once the command line parses

    checked_data: set[tuple[str, bool]] = set()
    for cfg in configs:
        data_key = (str(cfg.data.root), bool(cfg.data.download))
        prepare(cfg, check_data=data_key not in checked_data, check_tracking=False)
        checked_data.add(data_key)


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.propagate = False  # Lightning has its own handler; Hydra's would print each line twice
    for handler in lightning_log.handlers:
        handler.addFilter(_DropLitLoggerTip())


def stack_task(cfgs: list[DictConfig]) -> list[float]:
    """The task of a group of stackable jobs (`hydra/launcher=stacked`): their test errors (%).
    A failure is recorded in the runs it concerns and printed; the sweep goes on, as for one job."""
    from .jobs import train_stack

    _quiet_lightning()
    try:
        return [result["test_error"] for result in train_stack(cfgs)]
    except Exception as err:
        print(f"error: stack of {len(cfgs)} jobs failed ({type(err).__name__}: {_one_line(err)}); the sweep goes on", file=sys.stderr)
        return [float("nan")] * len(cfgs)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    from .jobs import train  # heavy imports after Hydra has parsed the command line

    _quiet_lightning()
    from .resume import JobBusy
    from .sweep import sweep_context

    try:
        return train(cfg)["test_error"]
    except JobBusy as err:  # another live process trains this job: not a failure of this one
        print(f"error: {_one_line(err)}", file=sys.stderr)
        if sweep_context() is None:
            raise SystemExit(2) from None
        return float("nan")
    except Exception as err:
        if sweep_context() is None:
            raise
        # The run is already FAILED in MLflow with its reason; one job must not stop the sweep.
        print(f"error: job failed ({type(err).__name__}: {_one_line(err)}); the sweep goes on", file=sys.stderr)
        return float("nan")


def main() -> None:
    register_stacked_launcher()  # hydra/launcher=stacked, before anything composes
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()
    from .sweep import failed_jobs  # filled in by the sweep callback; mlflow loads only once needed

    if failed_jobs:
        print(f"error: {len(failed_jobs)} job(s) of the sweep FAILED: {', '.join(failed_jobs)}", file=sys.stderr)
        sys.exit(1)
