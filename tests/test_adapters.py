"""lenet5.adapters against the libraries' own (private) code: each test pins a behaviour the suite
copies, so an upgrade of Hydra, torch or MLflow that changes it fails here, loudly.

Tests may reach into the libraries' internals (ruff checks only the code the suite ships).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mlflow
import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher

from lenet5.adapters import compile_error_types, global_tracking_uri, hydra_args_parser, is_hydra_command, sweep_jobs


def described(parser) -> list[tuple]:
    """Every argument of an argparse parser, as what decides how it parses."""
    return sorted(
        (tuple(a.option_strings), a.dest, a.nargs, a.const, a.default, tuple(a.choices or ()), type(a).__name__, a.required)
        for a in parser._actions  # noqa: SLF001 - argparse has no public list of a parser's arguments
    )


def test_the_parser_has_hydras_arguments():
    assert described(hydra_args_parser()) == described(get_args_parser())


COMMAND_LINES = [
    [],
    ["model.pool=max", "seed=1"],
    ["-m", "seed=0,1", "optim.lr=1e-3,2e-3"],
    ["--multirun", "hydra/launcher=stacked"],
    ["--cfg", "job"],
    ["-c", "hydra", "--resolve", "-p", "model"],
    ["--info"],
    ["-i", "plugins"],
    ["--help"],
    ["-h", "seed=2"],
    ["--hydra-help"],
    ["--shell-completion"],
    ["-cn", "other", "-cp", "/somewhere", "-cd", "/extra", "-r"],
    ["--experimental-rerun", "config.pickle"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda a: " ".join(a) or "(none)")
def test_the_parser_reads_a_command_line_as_hydra_does(argv):
    ours, hydras = hydra_args_parser().parse_args(argv), get_args_parser().parse_args(argv)
    assert vars(ours) == vars(hydras)
    nothing_runs = bool(hydras.cfg or hydras.info or hydras.help or hydras.hydra_help or hydras.shell_completion)
    assert is_hydra_command(ours) == nothing_runs


@pytest.mark.parametrize("argv", [["--cfg", "everything"], ["-i", "nothing"], ["--unknown"]], ids=" ".join)
def test_the_parser_refuses_what_hydra_refuses(argv, capsys):
    for parser in (hydra_args_parser(), get_args_parser()):
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(argv)
        assert refused.value.code == 2
    ours, hydras = capsys.readouterr().err.split("usage: ")[1:]
    assert ours == hydras


def test_version_is_hydras(capsys):
    for parser in (hydra_args_parser(), get_args_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["--version"])
    ours, hydras = capsys.readouterr().out.splitlines()
    assert ours == hydras


SWEEPS = [
    ["a=1"],
    ["a=1,2", "b=x,y,z"],
    ["a=1,2", "b=x,y", "c=3", "a=5,6,7"],  # a later override of a key wins and keeps its place
    ["seed=range(3)", "model.pool=choice(subsample,max)", "+extra=1", "~gone"],
    ["optim.lr=1e-3,2e-3", "optim.betas=[0.9,0.99]", "x='a,b'", "hydra.launcher.n_jobs=1,2", "y=null"],
    ["k=2", "k=3,4"],
]


@pytest.mark.parametrize("overrides", SWEEPS, ids=" ".join)
def test_sweep_jobs_are_the_basic_sweepers(overrides):
    parsed = OverridesParser.create().parse_overrides(overrides)
    (expected,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    assert sweep_jobs(parsed) == expected


def test_the_last_key_varies_fastest():
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y"])
    assert sweep_jobs(parsed) == [["a=1", "b=x"], ["a=1", "b=y"], ["a=2", "b=x"], ["a=2", "b=y"]]


def test_an_interval_sweep_is_refused_as_by_the_basic_sweeper():
    parsed = OverridesParser.create().parse_overrides(["lr=interval(0.1,1)"])
    with pytest.raises(HydraException) as basic:
        BasicSweeper.split_arguments(parsed, max_batch_size=None)
    with pytest.raises(HydraException) as ours:
        sweep_jobs(parsed)
    assert str(ours.value) == str(basic.value)


@pytest.mark.slow
def test_sweep_jobs_are_what_a_multirun_launches(tmp_path):
    """A real `-m` of a tiny Hydra app: its sweeper's params first, the command line after them."""
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent("""\
            a: 0
            b: 0
            c: 0
            hydra:
              sweeper:
                params:
                  a: 1,2
                  c: 7,8
            """)
    )
    (tmp_path / "app.py").write_text(
        textwrap.dedent("""\
            import hydra
            from hydra.core.hydra_config import HydraConfig

            @hydra.main(version_base="1.3", config_path=".", config_name="config")
            def main(cfg):
                print("JOB", " ".join(HydraConfig.get().overrides.task), flush=True)

            main()
            """)
    )
    command_line = ["b=x,y", "a=5,6,7"]
    launched = subprocess.run(
        [sys.executable, "app.py", "-m", *command_line, f"hydra.sweep.dir={tmp_path / 'multirun'}", "hydra/job_logging=none", "hydra/hydra_logging=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    jobs = [line.removeprefix("JOB ").split() for line in launched.stdout.splitlines() if line.startswith("JOB ")]
    expected = sweep_jobs(OverridesParser.create().parse_overrides(["a=1,2", "c=7,8", *command_line]))
    assert jobs == expected
    assert expected[:2] == [["a=5", "c=7", "b=x"], ["a=5", "c=7", "b=y"]]


def test_compile_errors_are_what_a_failing_backend_raises():
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no working C++ compiler")

    compiled = torch.compile(lambda x: x * 2 + 1, backend=failing_backend)
    try:
        with pytest.raises(compile_error_types(), match="no working C\\+\\+ compiler"):
            compiled(torch.ones(3))
    finally:
        torch._dynamo.reset()  # noqa: SLF001 - forget the failed frame
    from torch._dynamo.exc import BackendCompilerFailed, Unsupported
    from torch._inductor.exc import InductorError

    assert all(issubclass(error, compile_error_types()) for error in (BackendCompilerFailed, InductorError, Unsupported))


@pytest.fixture
def no_tracking_uri(monkeypatch):
    """MLflow's tracking URI unset (neither set in the process nor exported), as it was after."""
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    assert not mlflow.is_tracking_uri_set()
    yield
    mlflow.set_tracking_uri(before)


def test_an_unset_tracking_uri_is_set_for_the_block_and_unset_after(no_tracking_uri, tmp_path):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    with global_tracking_uri(uri):
        # Within: what MlflowClient() and the fluent API read, exported to subprocesses too.
        assert mlflow.get_tracking_uri() == uri == os.environ["MLFLOW_TRACKING_URI"]
    assert not mlflow.is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ


def test_a_set_tracking_uri_comes_back_after_the_block(no_tracking_uri, tmp_path):
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    mlflow.set_tracking_uri(first)
    with global_tracking_uri(second):
        assert mlflow.get_tracking_uri() == second
    assert mlflow.get_tracking_uri() == first == os.environ["MLFLOW_TRACKING_URI"]


def test_an_exported_tracking_uri_comes_back_after_the_block(no_tracking_uri, monkeypatch, tmp_path):
    exported, other = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", exported)
    with global_tracking_uri(other):
        assert mlflow.get_tracking_uri() == other
    assert mlflow.get_tracking_uri() == exported == os.environ["MLFLOW_TRACKING_URI"]


def test_the_stacked_launcher_is_registered_once_under_its_target():
    from hydra_plugins.lenet5_stacked_launcher.stacked_launcher import StackedLauncherConf, register

    register()
    register()  # a second call changes nothing
    target = StackedLauncherConf._target_
    launchers = [c for c in Plugins.instance().discover(Launcher) if f"{c.__module__}.{c.__name__}" == target]
    assert len(launchers) == 1
    # What Hydra's launcher lookup reads (Plugins._instantiate): the _target_ names that class.
    assert Plugins.instance().class_name_to_class[target] is launchers[0]
