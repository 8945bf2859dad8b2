"""The GPU check (benchmarks/gpu_check.py) end to end on the CPU: its dry run (`--device cpu
--tiny`) through the same entry the device machine runs (benchmarks/gpu_check.sh), a part that
fails and a part that outlives its time box, and the refusal to write a dry run into results/."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.func import vmap

from lenet5.config import PROJECT_DIR

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

PARTS = ["environment", "paper", "modern", "stacking", "projection", "agreement", "tracking"]


def gpu_check(out: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`bash benchmarks/gpu_check.sh --device cpu --tiny --out OUT ARGS` with this interpreter, and
    no carried wheels (those are for the device's Python 3.12, even where .gpu-carry/ exists)."""
    env = {**os.environ, "GPU_PYTHON": sys.executable, "GPU_CARRY": str(out / "no-carry"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        ["bash", str(PROJECT_DIR / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def rows(out: Path) -> list[dict]:
    with (out / "gpu_check.csv").open() as f:
        return list(csv.DictReader(f))


def results_state() -> dict[str, float]:
    folder = PROJECT_DIR / "results"
    return {p.name: p.stat().st_mtime for p in folder.glob("gpu_check*")}


@pytest.mark.slow
def test_the_dry_run_measures_every_part_and_checks_a_real_sweep(tmp_path):
    before = results_state()
    started = time.perf_counter()
    done = gpu_check(tmp_path)
    print(f"dry run: {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + (tmp_path / "gpu_check.log").read_text()[-5000:]
    report = (tmp_path / "gpu_check.md").read_text()
    for part in PARTS:
        assert f"\n## {part}: OK\n" in report, part
    found = rows(tmp_path)
    assert {r["part"] for r in found} == set(PARTS)
    assert all(r["status"] == "OK" for r in found)
    by_key = {(r["part"], r["key"]): r for r in found}
    assert by_key["tracking", "finished"]["value"] == "3/3"  # a stack of 2 and one job alone, FINISHED
    assert by_key["tracking", "metrics"]["value"] == "3/3"
    assert by_key["tracking", "models"]["value"] == "3/3"
    assert float(by_key["paper", "false_pass_s"]["value"]) > 0
    assert float(by_key["stacking", "stack_auto_k2_total"]["value"]) > 0
    assert by_key["agreement", "device_repeat_identical"]["value"] == "yes"  # the CPU twice: bit for bit
    assert float(by_key["projection", "compiled_h"]["value"]) > 0
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
    assert results_state() == before  # a dry run never writes into results/


@pytest.mark.slow
def test_a_failing_part_and_one_past_its_time_box_are_failed_and_the_others_still_run(tmp_path):
    # modern sleeps past a 5 s box and is killed with its worker; a fresh worker runs stacking,
    # which raises; environment, before both, is measured as ever.
    done = gpu_check(tmp_path, "--parts", "environment,modern,stacking", "--inject-hang", "modern", "--time-box", "modern=5",
                     "--inject-failure", "stacking", timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "\n## environment: OK\n" in report
    assert "\n## modern: FAILED\n" in report and "\n## stacking: FAILED\n" in report
    assert "## paper" not in report  # only the parts asked for
    found = {(r["part"], r["key"]): r for r in rows(tmp_path)}
    assert found["modern", "timeout"]["status"] == "FAILED" and "killed after 5 s" in found["modern", "timeout"]["note"]
    assert found["stacking", "error"]["note"] == "RuntimeError: injected failure (--inject-failure stacking)"
    assert all(r["status"] == "OK" for (part, _), r in found.items() if part == "environment")
    assert "gpu check: FAILED: modern, stacking" in done.stdout


def test_a_dry_run_without_out_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(PROJECT_DIR / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "a dry run (--tiny or --device cpu) needs --out: it never writes into results/" in done.stderr


@pytest.fixture
def script(monkeypatch):
    """benchmarks/gpu_check.py as a module."""
    spec = importlib.util.spec_from_file_location("gpu_check", PROJECT_DIR / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_projection_interpolates_a_stack_size_between_the_measured_ones(script):
    module = script
    points = {1: 10.0, 4: 13.0, 16: 25.0}
    assert module.interpolate(points, 2) == 11.0
    assert module.interpolate(points, 4) == 13.0
    assert module.interpolate(points, 32) == 41.0  # beyond the last: the line through the last two


class Layers:
    """n tanh layers: each n another architecture, as each stack of sweep=factorial is."""

    def __init__(self, n: int):
        self.net = torch.nn.Sequential(*[torch.nn.Tanh() for _ in range(n)])

    def forward(self, x):
        return self.net(x)


def test_the_watch_sees_dynamo_give_up_compiling_a_vmapped_function(script):
    """The stacks' compiled functions are torch.func.vmap's one wrapper: after 8 compilations of
    other architectures Dynamo runs it eagerly, with one log record, which the check reports."""
    with script.compiler_watch() as seen:
        for n in range(1, 11):
            torch.compile(vmap(Layers(n).forward), backend="eager")(torch.ones(3, 2))
    (fallback,) = script.compile_fallbacks(seen)
    assert "recompile_limit" in fallback and "'wrapped'" in fallback
