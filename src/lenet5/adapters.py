"""What the suite needs from Hydra, torch and MLflow that they offer no public API for, in one place.

Each function mirrors, with public calls only where it can, behaviour the library keeps
internal; tests/test_adapters.py compares each with the library's own (private) code, so an
upgrade that changes that behaviour fails there, loudly, instead of in a sweep.

- `hydra_args_parser`: the command line `@hydra.main` parses (Hydra builds it in
  `hydra._internal.utils.get_args_parser`);
- `sweep_jobs`: the jobs Hydra's basic sweeper launches for a multirun's overrides
  (`hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments`);
- `compile_error_types`: what `torch.compile` raises when it cannot compile (torch exports no
  public base class for Dynamo's and Inductor's errors);
- `global_tracking_uri`: MLflow's process-wide tracking URI for one block, restored after it
  (MLflow keeps its context manager for that, `_use_tracking_uri`, private); public calls only.

Light on purpose: `run.py` imports this before anything heavy (torch and MLflow only inside
the functions that need them).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import hydra
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

#: `--info`'s choices, as Hydra 1.3 lists them.
HYDRA_INFO_CHOICES = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]


def hydra_args_parser() -> argparse.ArgumentParser:
    """A parser of the command line `@hydra.main` reads: Hydra 1.3's flags, with the same
    names, destinations, choices and defaults (so `-m`, `--cfg job`, `--info plugins`, ...
    parse here exactly as Hydra will parse them, and anything else is refused the same way)."""
    parser = argparse.ArgumentParser(add_help=False, description="Hydra")
    parser.add_argument("--help", "-h", action="store_true", help="Application's help")
    parser.add_argument("--hydra-help", action="store_true", help="Hydra's help")
    parser.add_argument("--version", action="version", version=f"Hydra {hydra.__version__}", help="Show Hydra's version and exit")
    parser.add_argument("overrides", nargs="*", help="Any key=value arguments to override config values (use dots for.nested=overrides)")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"], help="Show config instead of running [job|hydra|all]")
    parser.add_argument("--resolve", action="store_true", help="Used in conjunction with --cfg, resolve config interpolations before printing.")
    parser.add_argument("--package", "-p", help="Config package to show")
    parser.add_argument("--run", "-r", action="store_true", help="Run a job")
    parser.add_argument("--multirun", "-m", action="store_true", help="Run multiple jobs with the configured launcher and sweeper")
    parser.add_argument("--shell-completion", "-sc", action="store_true", help="Install or Uninstall shell completion")
    parser.add_argument("--config-path", "-cp", help="Overrides the config_path specified in hydra.main()")
    parser.add_argument("--config-name", "-cn", help="Overrides the config_name specified in hydra.main()")
    parser.add_argument("--config-dir", "-cd", help="Adds an additional config dir to the config search path")
    parser.add_argument("--experimental-rerun", help="Rerun a job from a previous config pickle")
    info_help = f"Print Hydra information [{'|'.join(HYDRA_INFO_CHOICES)}]"
    parser.add_argument("--info", "-i", const="all", nargs="?", action="store", choices=HYDRA_INFO_CHOICES, help=info_help)
    return parser


def is_hydra_command(args: argparse.Namespace) -> bool:
    """True when the parsed command line asks Hydra for information (--cfg, --help, --info, ...): nothing runs."""
    return bool(args.cfg or args.info or args.help or args.hydra_help or args.shell_completion)


def sweep_jobs(overrides: Iterable[Override]) -> list[list[str]]:
    """The override lists of the jobs Hydra's basic sweeper launches for `overrides`, in its order.

    A later override of a key replaces an earlier one but keeps the earlier one's place; the
    jobs are the cartesian product of each key's values, the LAST key varying fastest
    (`itertools.product`). Only discrete sweeps (`a,b`, `choice(...)`, `range(...)`, ...) are
    supported, as by the basic sweeper; an interval sweep raises HydraException.
    """
    values: dict[str, list[str]] = {}  # insertion order: the first mention of each key
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            kind = override.value_type.name if override.value_type is not None else "unknown"
            raise HydraException(f"BasicSweeper does not support sweep type : {kind}")
    return [list(job) for job in itertools.product(*values.values())]


def compile_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions by which `torch.compile`d code reports that it could not be compiled
    (Dynamo tracing, a backend such as Inductor failing, ...): Dynamo's base exception class.

    torch has no public name for it (`torch.compiler` exports only PrecompileError), so this
    is the one place the suite reaches into torch's private modules.
    """
    from torch._dynamo.exc import TorchDynamoException  # noqa: PLC2701 - no public equivalent; pinned by tests/test_adapters.py

    return (TorchDynamoException,)


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at `uri` for the block only, then restore it:
    unset stays unset. What reads it: the fluent API (`mlflow.search_runs`), and the model
    functions that take no tracking URI (`mlflow.pytorch.log_model`, `load_model("runs:/...")`).

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which processes started later
    (a sweep's jobs) would inherit: `set_tracking_uri(None)` is what unsets both. A URI the
    user exported is restored as it was (MLflow's private `_use_tracking_uri` would unset it).
    """
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
