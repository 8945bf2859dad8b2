"""Today's numerics, pinned to the last digit on this CPU and torch, through every training path.

A redesign of training (the Lightning path, train.py + module.py; the stacked path,
stacked.py + stacked_train.py behind `hydra/launcher=stacked`; trainer.compile) must leave
every number as it is. This file launches short real runs through the real entry point
(`python run.py ...` in subprocesses, `helpers.run_cli`), all into one real SQLite MLflow
store with its artifacts in a temp dir, reads each run back with MlflowClient, and compares
with the committed reference `tests/data/numerics_reference.json`, exactly: every logged
metric's whole history (step -> value; floats compared as floats, stored by their repr, which
round-trips) except the timing metrics (`helpers.TIMING_METRICS`), plus a SHA-256 of the
trained weights the run logged as its MLflow model.

What is pinned: 100 training images, 2 passes (so SDLM's second h_kk estimate, the per-pass
schedule and the per-pass checkpoint commit are inside), 500 test images; seed 0, stacks
seeds 0, 1, 2. SDLM is `experiment=paper` (batch 4: 25 updates a pass, h_kk blended every
batch), Adam is `experiment=modern` (batch 64: a batch of 64 and one of 36 a pass, so a
short last batch is on the path too). Few updates suffice: a change in the last bit of one
update shows in the weights' digest and in the float32 losses.

| launch            | path                                                      | SDLM | Adam |
| ----------------- | --------------------------------------------------------- | ---- | ---- |
| single_eager      | `run.py` (train.py, Lightning), trainer.compile=false     | yes  | yes  |
| stacked_eager     | `run.py -m hydra/launcher=stacked`, stacks of 3, eager    | yes  | yes  |
| single_compiled   | `run.py`, trainer.compile=true (Inductor on the CPU)      | yes  | no   |
| stacked_compiled  | stacks of 3, trainer.compile=true: opt in, see below      | yes  | no   |

The two eager stacks are one multirun (`experiment=paper,modern seed=0,1,2`, 3 models a
process), so the stacked launcher itself, grouping included, is on the path. The single runs
are plain `python run.py` commands (no `-m`), the path of `make run`.

Why not more. Most of a launch is fixed cost (starting Python with torch, Lightning and MLflow,
checking the command line, each run's figures and model), and compiling is the dear part.
Measured on this project's 2 cores while other jobs kept the load at 4 to 5: the default
file in 3.9 to 4 minutes (140 s of CPU; single_eager 43 to 74 s for its two processes,
stacked_eager 69 to 114 s, single_compiled 35 to 73 s): roughly 2.5 minutes on idle cores.
The compiled stack of 3 (two compiled functions, its gradient step and its per-batch
curvature pass) took 105 s with a cold Inductor cache and 93 s warm at that load, and 5
minutes at load 7 to 9: more than half the budget again. So it is pinned in the reference
but runs only when asked, `NUMERICS_COMPILED_STACK=1`; run it before and after a change to
stacked.py, stacked_train.py or compile.py. A compiled Adam run would compile another graph
(ReLU, max-pool, softmax) on the compiler path the SDLM run already covers; it is left out.
Inductor's on-disk cache is left as it is: a warm cache gave the same bits as the cold one
that wrote the reference.

Beyond the numbers, `test_the_pinned_runs_are_what_they_claim` checks that each launch ran
the path it names (stack tags and one stack id a stack, `trainer.compile` as named, no eager
fallback of a compiled run) and that seed 0 alone, in a stack and compiled is one job (the
same config hash, metrics at the same steps, the same rate schedule to the bit). A stack
member is NOT bit-identical to the same job trained alone (stacked.py: vmap's grouped
convolutions add in another order), nor a compiled run to an eager one, so each is pinned on
its own (tests/test_stacked.py and test_compile.py check they agree to float32 rounding).
Today the Adam stack member of seed 0 logs every metric exactly as the single run does but
its weights differ in the last bits; SDLM's error rates agree, its losses and step telemetry
differ from about the 5th digit. That is recorded in the reference, not asserted.

The numbers hold for one CPU and torch only, so the reference holds one entry per platform
(`platform_fingerprint`: torch version, CPU model and instruction set, threads, OS and
architecture), each with its own runs; the tests compare with the entry of the platform they
run on and skip, saying how it differs from the nearest one pinned, where none matches. Two
machines that both report "AMD EPYC" can differ in instruction set (AVX512 against AVX2),
which changes the float32 kernels' rounding: each gets its entry. Record a new machine's entry
from code whose numbers are already pinned elsewhere (the same commit), before changing any
training code, so that its pins guard the change made there.

Regenerating the reference (only legitimate when a change is MEANT to change numerics, such
as a new default, a fixed bug in the arithmetic, or a torch upgrade; never to make a refactor
pass; say why in the commit that changes the file):

    NUMERICS_WRITE=1 .venv/bin/python -m pytest tests/test_numerics.py -n 0
    .venv/bin/python -m tests.test_numerics --write                  # the same
    .venv/bin/python -m tests.test_numerics --write --compiled-stack # also the opt-in compiled stack

Writing touches this platform's entry only (adding it if there is none); within it, runs
not regenerated (the compiled stack without `--compiled-stack`) are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import mlflow
import pytest

from .helpers import TIMING_METRICS, fresh_store, history, run_cli, short_overrides, weights


REFERENCE = Path(__file__).parent / "data" / "numerics_reference.json"
WRITE = os.environ.get("NUMERICS_WRITE") == "1"

TRAIN, PASSES = 100, 2
OPTIMIZERS = ("sdlm", "adam")  # experiment=paper, experiment=modern
STACKED = ["-m", "hydra/launcher=stacked", "hydra.launcher.models_per_process=3", "seed=0,1,2"]
#: launch name -> its `run.py` commands, each with the runs it makes as (optimizer, seed). Each
#: launch has its own MLflow experiment (its name) in the shared store: `trainer.compile` is not
#: part of the config hash, so in one experiment a sweep would skip a job another launch FINISHED.
LAUNCHES = {
    "single_eager": [
        (["experiment=paper", "trainer.compile=false", "seed=0"], [("sdlm", 0)]),
        (["experiment=modern", "trainer.compile=false", "seed=0"], [("adam", 0)]),
    ],
    "stacked_eager": [
        ([*STACKED, "experiment=paper,modern", "trainer.compile=false"], [(o, s) for o in OPTIMIZERS for s in (0, 1, 2)]),
    ],
    "single_compiled": [
        (["experiment=paper", "trainer.compile=true", "seed=0"], [("sdlm", 0)]),
    ],
    "stacked_compiled": [
        ([*STACKED, "experiment=paper", "trainer.compile=true"], [("sdlm", s) for s in (0, 1, 2)]),
    ],
}
#: Launches that run only when their variable is 1 (their reference entries are kept meanwhile).
OPT_IN = {"stacked_compiled": "NUMERICS_COMPILED_STACK"}
#: Printed by compile.py when Inductor fails and the run trains eagerly instead.
EAGER_FALLBACK = "training eagerly"


def key(launch: str, optimizer: str, seed: int) -> str:
    return f"{launch}/{optimizer}/seed{seed}"


def keys(launch: str) -> list[str]:
    return [key(launch, o, s) for _, runs in LAUNCHES[launch] for o, s in runs]


def opted_out(launch: str) -> str | None:
    """Why `launch` does not run now, or None."""
    variable = OPT_IN.get(launch)
    if variable is None or os.environ.get(variable) == "1":
        return None
    return f"{launch} compiles for minutes: opt in with {variable}=1"


def platform_fingerprint() -> dict[str, str]:
    """What the numbers depend on besides the code: torch and the CPU's kernels and threads."""
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": str(torch.get_num_threads()),
        "system": platform.system(),
        "machine": platform.machine(),
    }


def load_reference() -> dict | None:
    return json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else None


def platform_runs(reference: dict | None, here: dict[str, str]) -> dict | None:
    """The pinned runs of platform `here` in `reference` ({key: observation}), or None."""
    if reference is None:
        return None
    return next((entry["runs"] for entry in reference["platforms"] if entry["platform"] == here), None)


def skip_on_another_platform(reference: dict | None) -> None:
    if WRITE:
        return
    if reference is None:
        pytest.fail(f"{REFERENCE} is missing: create it with NUMERICS_WRITE=1 (see this module's docstring)")
    here = platform_fingerprint()
    if platform_runs(reference, here) is not None:
        return

    def differ(pinned: dict[str, str]) -> list[str]:
        return sorted(k for k in pinned.keys() | here.keys() if pinned.get(k) != here.get(k))

    nearest = min((entry["platform"] for entry in reference["platforms"]), key=lambda pinned: len(differ(pinned)))
    pytest.skip(
        f"numbers are pinned per CPU and torch ({len(reference['platforms'])} platform(s)); this machine differs from the "
        "nearest in " + ", ".join(f"{k} (pinned {nearest.get(k)!r}, here {here.get(k)!r})" for k in differ(nearest))
        + ": record its entry with NUMERICS_WRITE=1 from code already pinned elsewhere (module docstring)"
    )


def write_reference(runs: dict[str, dict]) -> None:
    """Add `runs` to this platform's entry of the reference (created if it has none); other
    platforms' entries stay as they are."""
    here = platform_fingerprint()
    old = load_reference()
    entries = old["platforms"] if old is not None else []
    kept = platform_runs(old, here) or {}
    entry = {"platform": here, "runs": dict(sorted({**kept, **runs}.items()))}
    others = [e for e in entries if e["platform"] != here]
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "about": "tests/test_numerics.py: exact metric histories and trained-weight digests of short runs, one entry per "
        "platform; regenerate only when a change is meant to change numerics (see the module docstring)",
        "platforms": [*others, entry],
    }
    REFERENCE.write_text(json.dumps(document, indent=1) + "\n")


def observe(client: mlflow.MlflowClient, store: str, run) -> dict:
    """A run's deterministic record: each metric's history {step: value} and its weights' SHA-256."""
    metrics = {}
    for name in sorted(set(run.data.metrics) - TIMING_METRICS):
        steps = history(client, run.info.run_id, name)
        assert len({s for s, _ in steps}) == len(steps), f"{name} logged twice at one step: {steps}"
        metrics[name] = {str(s): v for s, v in steps}
    digest = hashlib.sha256()
    for name, tensor in sorted(weights(store, run).items()):
        tensor = tensor.contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return {"metrics": metrics, "weights_sha256": digest.hexdigest()}


class Launches:
    """Each launch run once, when a test first needs it (so `-k single_eager` runs only that one),
    into one store; `runs[key]` its observations, `info[key]` the MLflow runs, `output[launch]`
    its stdout and stderr."""

    def __init__(self, folder: Path):
        self.folder, self.store = folder, fresh_store(folder)
        self.client = mlflow.MlflowClient(self.store)
        self.runs: dict[str, dict] = {}
        self.info: dict = {}
        self.output: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    def __call__(self, name: str) -> None:
        if name in self.failed:
            pytest.fail(f"launch {name} failed: {self.failed[name]}")
        if name not in self.output:
            try:
                self._launch(name)
            except BaseException as err:
                self.failed[name] = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise
            if WRITE:
                write_reference({k: self.runs[k] for k in keys(name)})

    def _launch(self, name: str) -> None:
        started, output = time.perf_counter(), ""
        for args, _ in LAUNCHES[name]:
            done = run_cli(*args, *short_overrides(self.store, name, passes=PASSES, subset=TRAIN), cwd=self.folder, timeout=900)
            assert done.returncode == 0, f"{name}: {' '.join(args)}\n{done.stderr[-3000:]}"
            output += done.stdout + done.stderr
        experiment = self.client.get_experiment_by_name(name)
        runs = [r for r in self.client.search_runs([experiment.experiment_id]) if "config_hash" in r.data.tags]  # not a sweep's parent
        for run in runs:
            k = key(name, run.data.params["optim.name"], int(run.data.tags["seed"]))
            assert run.info.status == "FINISHED", (k, run.info.status)
            self.runs[k], self.info[k] = observe(self.client, self.store, run), run
        assert sorted(key(name, r.data.params["optim.name"], int(r.data.tags["seed"])) for r in runs) == sorted(keys(name))
        self.output[name], self.seconds[name] = output, time.perf_counter() - started


def differences(want: dict, got: dict) -> list[str]:
    """Every way `got` misses `want`, one line each; a metric `want` lacks is not a difference."""
    lines = []
    if got["weights_sha256"] != want["weights_sha256"]:
        lines.append(f"trained weights: sha256 {got['weights_sha256'][:16]}..., reference {want['weights_sha256'][:16]}...")
    for name, steps in want["metrics"].items():
        now = got["metrics"].get(name)
        if now is None:
            lines.append(f"{name}: no longer logged")
            continue
        for step in sorted(steps.keys() | now.keys(), key=int):
            a, b = steps.get(step), now.get(step)
            same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
            if not same:
                lines.append(f"{name} step {step}: {b!r}, reference {a!r}")
    return lines


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    skip_on_another_platform(load_reference())
    launches = Launches(tmp_path_factory.mktemp("numerics"))
    yield launches
    print("\nseconds per launch: " + ", ".join(f"{n} {s:.0f}" for n, s in launches.seconds.items()))


def cases():
    for name in LAUNCHES:
        reason = opted_out(name)
        for k in keys(name):
            yield pytest.param(name, k, id=k, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.mark.slow
@pytest.mark.parametrize("launch,k", list(cases()))
def test_numerics_match_the_reference_exactly(launched, launch, k):
    launched(launch)
    if WRITE:
        pytest.skip(f"NUMERICS_WRITE=1: wrote {k} into {REFERENCE}")
    pinned = platform_runs(load_reference(), platform_fingerprint())
    assert k in pinned, f"{k} is not in {REFERENCE.name} for this platform: regenerate it (NUMERICS_WRITE=1)"
    lines = differences(pinned[k], launched.runs[k])
    assert not lines, f"{k} differs from the pinned numerics in {len(lines)} ways:\n" + "\n".join(lines[:40])


@pytest.mark.slow
def test_the_pinned_runs_are_what_they_claim(launched):
    for name in LAUNCHES:
        if not opted_out(name):
            launched(name)
    runs, info, output = launched.runs, launched.info, launched.output
    for k, run in info.items():
        assert ("stack.size" in run.data.tags) == k.startswith("stacked_"), k
        assert run.data.params["trainer.compile"].lower() == str("_compiled" in k).lower(), k
    for name in output:
        if name.startswith("stacked_"):
            for optimizer in {k.split("/")[1] for k in keys(name)}:
                members = [info[key(name, optimizer, s)] for s in (0, 1, 2)]
                assert {m.data.tags["stack.size"] for m in members} == {"3"}, (name, optimizer)
                assert len({m.data.tags["stack.id"] for m in members}) == 1, (name, optimizer)  # trained together
        if name.endswith("_compiled"):
            assert EAGER_FALLBACK not in output[name], name  # compile.py warns when it falls back to eager
    assert "Launching 6 jobs locally as 2 stacks" in output["stacked_eager"]
    # Seed 0 in a stack, alone, and compiled is one job (trainer.compile is not in the config
    # hash): the same metrics at the same steps and the same rate schedule, to the bit. The
    # other metrics and the weights differ in the last bits (module docstring), so they are
    # pinned each on its own.
    for optimizer in OPTIMIZERS:
        alone = key("single_eager", optimizer, 0)
        others = [key("stacked_eager", optimizer, 0)] + [key(n, optimizer, 0) for n in ("single_compiled", "stacked_compiled") if key(n, optimizer, 0) in runs]
        for other in others:
            assert info[other].data.tags["config_hash"] == info[alone].data.tags["config_hash"], other
            assert {m: list(h) for m, h in runs[other]["metrics"].items()} == {m: list(h) for m, h in runs[alone]["metrics"].items()}, other
            assert runs[other]["metrics"]["lr"] == runs[alone]["metrics"]["lr"], other


if __name__ == "__main__":
    # python -m tests.test_numerics --write [--compiled-stack]: regenerate the reference.
    if "--write" not in sys.argv[1:]:
        sys.exit("usage: python -m tests.test_numerics --write [--compiled-stack]  (see the module docstring)")
    os.environ["NUMERICS_WRITE"] = "1"
    if "--compiled-stack" in sys.argv[1:]:
        os.environ["NUMERICS_COMPILED_STACK"] = "1"
    # This module's imports (hydra, mlflow) came first, so pytest cannot rewrite their asserts: say nothing of it.
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    sys.exit(pytest.main([str(Path(__file__).resolve()), "-n", "0", "-q", "-s", *quiet]))
