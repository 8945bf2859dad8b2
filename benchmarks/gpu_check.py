"""The GPU check: one command that proves the suite's GPU path and measures it, in at most 8 minutes.

    make gpu-check                                                     # on a GPU: results/gpu_check.{md,csv,log}
    bash benchmarks/gpu_check.sh --out "$OUT"                          # the same, as the device call runs it (docs/gpu-check.md)
    MNIST_ROOT=../shared/data python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu-check   # dry run, CPU

Parts, in order, each a function below (its docstring is its section's text in the report):
environment, paper, modern, stacking, projection, agreement, tracking.

Every part has a time box (seconds; `--time-box PART=S` changes one, `total=S` the whole run).
The parts run one after another in one worker process (one import of torch, Lightning and
MLflow); this process watches the clock: a part past its box is killed with the worker, recorded
FAILED (the rows it measured before stay), and a fresh worker goes on with the next part. A part
that raises is recorded FAILED and the others still run. Every part writes rows of one record
type (`Row`) as it measures; the report (`gpu_check.md`, `gpu_check.csv`, and the workers'
output in `gpu_check.log`) is rewritten after each part, so a run killed from outside still
leaves what it measured. The exit code is 1 when any row is FAILED, else 0.

Where a full 60,000-image pass would not fit the box, a part times pass 2 of a 2-pass run over
fewer images (pass 1 pays for compiling and warm-up) and scales it to 60,000: the row's note
says so. `--tiny` shrinks every part so that the whole check runs in about a minute on a CPU
(`--device cpu`): a dry run of the code path, whose numbers mean nothing. A dry run never
writes into results/: `--out` is required unless the run is the real one (`--device cuda`,
not `--tiny`).

`--inject-failure PART` makes PART raise before it measures and `--inject-hang PART` makes it
sleep past its box: test hooks for the FAILED paths (tests/test_gpu_check.py), reported as such.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

PROJECT_DIR = Path(__file__).resolve().parents[1]
MNIST_TRAIN = 60_000
#: A worker exits with this after a part failed on a GPU: a CUDA error can poison the process,
#: so the next part starts in a fresh one.
RESTART = 3


@dataclass
class Row:
    """One measurement or check. `value` is a number in `unit`, or text (unit ""); `status` is
    OK or FAILED; `key` is a short stable id (the projection reads the stacking rows by it)."""

    part: str
    key: str
    item: str
    value: float | int | str | None
    unit: str = ""
    status: str = "OK"
    note: str = ""


@dataclass(frozen=True)
class Sizes:
    """How much each part trains. Images are training images a pass, per model."""

    paper_images: int  # `paper`, batch 4: the eager and the compiled run
    modern_images: int  # `modern`, batch 64
    test_images: int  # evaluation images in the timed runs (0: all 10,000)
    eager_stack_ks: tuple[int, ...]  # stack sizes timed eagerly (for the projection's eager case)
    eager_stack_images: int
    stack_ks: tuple[int, ...]  # stack sizes timed with trainer.compile=auto
    stack_images: int
    agreement_images: int  # the CPU against device run, 2 passes
    agreement_test_images: int
    probe_images: int  # the two short device runs compared bit for bit, 1 pass
    tracking_seeds: int  # jobs of the tracking sweep (one variant, seeds 0..n-1)
    tracking_models_per_process: int
    tracking_images: int
    tracking_test_images: int
    projection_overrides: tuple[str, ...]  # added to `-m sweep=factorial` (the dry run projects a slice of it)


# 2,000 paper images = 500 steps a pass; 59,968 modern images = 937 batches of 64 (a full
# pass adds a batch of 32, whose shape compiles once more in pass 1); 10,000 test images so
# that a stack's per-pass overhead (evaluation, SDLM's estimate) is measured at full size.
FULL = Sizes(
    paper_images=2_000, modern_images=59_968, test_images=0,
    eager_stack_ks=(1, 4), eager_stack_images=400, stack_ks=(1, 4, 16, 64), stack_images=800,
    agreement_images=5_000, agreement_test_images=0, probe_images=400,
    tracking_seeds=5, tracking_models_per_process=4, tracking_images=512, tracking_test_images=1_000, projection_overrides=(),
)  # fmt: skip
TINY = Sizes(
    paper_images=64, modern_images=128, test_images=64,
    eager_stack_ks=(1, 2), eager_stack_images=32, stack_ks=(1, 2), stack_images=32,
    agreement_images=64, agreement_test_images=64, probe_images=32,
    tracking_seeds=3, tracking_models_per_process=2, tracking_images=64, tracking_test_images=64,
    projection_overrides=("model.pool=max", "model.activation=relu"),
)  # fmt: skip

#: Seconds each part may take, and the whole run (8 minutes less the wheel install before it).
TIME_BOXES = {
    "environment": 30, "paper": 80, "modern": 65, "stacking": 140, "projection": 20, "agreement": 70,
    "tracking": 55, "total": 450,
}  # fmt: skip
#: The dry run on a busy 2-core CPU: imports alone take 10 to 25 s there.
TINY_TIME_BOXES = {
    "environment": 60, "paper": 60, "modern": 60, "stacking": 60, "projection": 60, "agreement": 90,
    "tracking": 120, "total": 420,
}  # fmt: skip


@dataclass
class Context:
    """What a part gets: where to train, how much, where to write, and its clock."""

    device: str  # "cuda" or "cpu"
    sizes: Sizes
    work: Path  # scratch folder of this check (stores, Hydra outputs); deleted at the end
    rows_file: Path  # JSON lines: the rows of every part so far (the projection reads them)
    part: str
    deadline: float  # time.time() by which this part must be done

    def emit(self, row: Row) -> None:
        _append(self.rows_file, {"event": "row", **asdict(row)})
        print(f"[{row.part}] {row.status} {row.item}: {_shown(row.value)} {row.unit} {row.note}".rstrip(), flush=True)

    def left(self) -> float:
        """Seconds left in this part's box."""
        return self.deadline - time.time()

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# --- shared helpers (heavy imports stay inside functions: the watching process needs none) ----


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:500]


def job(ctx: Context, *overrides: str, **settings: Any):
    """The composed config of `overrides` on this check's device, recorded (if at all) in its own
    store; `settings` are more overrides as key=value (`data__batch_size=4` for data.batch_size)."""
    from lenet5.presets import compose_config

    base = {
        "trainer.accelerator": "gpu" if ctx.cuda else "cpu", "trainer.progress_bar": "false",
        "tracking.uri": f"sqlite:///{ctx.work / 'mlflow.db'}", "tracking.artifact_root": str(ctx.work / "mlartifacts"),
        "tracking.experiment": "gpu_check",
        **{key.replace("__", "."): value for key, value in settings.items()},
    }  # fmt: skip
    return compose_config([*overrides, *(f"{key}={value}" for key, value in base.items())])


#: What, in torch's log or warnings, says a run did not train as configured or not reproducibly.
COMPILE_FALLBACK_SIGNS = ("trainer.compile:", "recompile_limit", "cache_size_limit", "skipping cudagraphs")
NONDETERMINISM_SIGN = "does not have a deterministic implementation"


@contextmanager
def compiler_watch() -> Iterator[list[str]]:
    """Collects, while active, the log records and warnings that say a run did not train as
    configured or not reproducibly: the suite's 'trainer.compile: ... training eagerly' warning;
    Dynamo's 'hit config.recompile_limit' (that function then runs eagerly); Inductor's
    'skipping cudagraphs due to ...' (compiled, but without CUDA graphs); PyTorch's 'does not
    have a deterministic implementation' (trainer.deterministic: deterministic algorithms,
    warn only)."""
    import logging
    import warnings

    seen: list[str] = []
    signs = (*COMPILE_FALLBACK_SIGNS, NONDETERMINISM_SIGN)

    def keep(text: str) -> None:
        if any(sign in text for sign in signs):
            seen.append(" ".join(text.split())[:300])

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            keep(record.getMessage())

    handler = Handler(logging.WARNING)
    # torch's registered loggers do not propagate: Dynamo's recompile limit is logged under the
    # first, Inductor's CUDA graph skips under the second or the third.
    logs = [logging.getLogger(name) for name in ("torch._dynamo", "torch._inductor", "torch._inductor.cudagraph_trees")]
    for log in logs:
        log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen
        for w in caught:
            keep(str(w.message))
    finally:
        for log in logs:
            log.removeHandler(handler)


def compile_fallbacks(seen: list[str]) -> list[str]:
    """The messages of `compiler_watch` that say compiled code ran eagerly or without CUDA graphs."""
    return [s for s in seen if any(sign in s for sign in COMPILE_FALLBACK_SIGNS)]


def nondeterministic_ops(seen: list[str]) -> list[str]:
    """Names of the operations PyTorch warned have no deterministic implementation."""
    return sorted({s.split(" " + NONDETERMINISM_SIGN)[0].split()[-1] for s in seen if NONDETERMINISM_SIGN in s})


@dataclass
class Fit:
    """What `fit` gives back."""

    seconds: list[float]  # training seconds of each pass
    history: dict[str, list[float]]  # metric -> its value after each pass
    weights: dict[str, Any]  # the trained network's state dict, on the CPU
    seen: list[str]  # what `compiler_watch` saw


def fit(cfg, metrics: tuple[str, ...] = ()) -> Fit:
    """Train `cfg` on the single-run path (Lightning, as `train.train` trains, without recording).
    The seconds of a pass are the suite's own `EpochThroughput` time: first training batch to
    last, synchronised on a GPU, evaluation excluded; `metrics` are read as the module logs
    them (train_loss, train_error, test_error, ...)."""
    import lightning as L

    from lenet5.callbacks import EpochThroughput
    from lenet5.jobs import prepare
    from lenet5.train import make_trainer

    class PerPass(L.Callback):
        """After EpochThroughput (which has synchronised): each pass's seconds; and each pass's
        logged metrics, complete once the pass's last hook ran (read at the next pass's start)."""

        def __init__(self):
            self.seconds: list[float] = []
            self.history: dict[str, list[float]] = {name: [] for name in metrics}

        def on_train_epoch_end(self, trainer, pl_module):
            timer = next(c for c in trainer.callbacks if isinstance(c, EpochThroughput))
            self.seconds.append(timer.finished - timer.started)

        def take(self, trainer):
            for name in metrics:
                self.history[name].append(float(trainer.callback_metrics[name]))

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch > 0:
                self.take(trainer)

        def on_fit_end(self, trainer, pl_module):
            self.take(trainer)

    datamodule, module = prepare(cfg, check_tracking=False)
    trainer = make_trainer(module, logger=False)
    per_pass = PerPass()
    trainer.callbacks.append(per_pass)
    with compiler_watch() as seen:
        trainer.fit(module, datamodule=datamodule)
    weights = {name: t.detach().cpu().clone() for name, t in module.model.state_dict().items()}
    return Fit(per_pass.seconds, per_pass.history, weights, seen)


def stack_passes(ctx: Context, k: int, images: int, compile_setting: str) -> tuple[list[float], list[float], list[str]]:
    """K `paper` models (seeds 0..K-1) trained as one stack for 2 passes over `images` images each,
    as `hydra/launcher=stacked` trains them (`StackedTraining`, deterministic algorithms on):
    (training seconds of each pass: the stack's `epoch_time_s`; wall seconds of each pass, SDLM's
    estimate and the evaluation on the test images included; what `compiler_watch` saw)."""
    from lenet5.stacked import StackedTraining
    from lenet5.engine import training_device, use_deterministic_kernels
    from lenet5.jobs import prepare

    cfgs = [
        job(ctx, "experiment=paper", seed=s, data__train_subset=images, data__test_subset=ctx.sizes.test_images,
            trainer__max_epochs=2, trainer__compile=compile_setting)
        for s in range(k)
    ]  # fmt: skip
    prepared = [prepare(c, check_data=i == 0, check_tracking=False) for i, c in enumerate(cfgs)]
    device = training_device(cfgs[0].trainer)
    use_deterministic_kernels(True)  # as stacked_train does for trainer.deterministic
    datamodule = prepared[0][0]
    datamodule.setup()
    datamodule.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in datamodule.splits.items()}
    train_s, wall_s = [], []
    with compiler_watch() as seen:
        started = time.perf_counter()
        for result in StackedTraining([m for _, m in prepared], datamodule, device).passes():
            wall_s.append(time.perf_counter() - started)
            train_s.append(result.metrics[0]["epoch_time_s"])
            started = time.perf_counter()
    return train_s, wall_s, seen


# --- the parts ---------------------------------------------------------------------------------


def environment(ctx: Context) -> None:
    """What the check ran on: Python, torch and its CUDA build, the driver, the GPU, and the
    versions of the packages the suite imports (on the device machine, the image's torch with the
    carried wheels beside it). FAILED when `--device cuda` finds no usable GPU."""
    import importlib.metadata as metadata
    import platform

    import torch

    ctx.emit(Row("environment", "python", "Python", platform.python_version()))
    ctx.emit(Row("environment", "torch", "torch", torch.__version__))
    ctx.emit(Row("environment", "cuda_build", "CUDA of the torch build", torch.version.cuda or "none (CPU build)"))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    ctx.emit(Row("environment", "cudnn", "cuDNN", str(cudnn) if cudnn else "none"))
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        driver, smi_name, memory = (part.strip() for part in smi.stdout.splitlines()[0].split(","))
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        driver, smi_name, memory = "n/a (no nvidia-smi)", "", ""
    ctx.emit(Row("environment", "driver", "NVIDIA driver", driver))
    if ctx.cuda:
        if not torch.cuda.is_available():
            ctx.emit(Row("environment", "gpu", "GPU", "none", status="FAILED", note="--device cuda, but torch.cuda.is_available() is False"))
            return
        props = torch.cuda.get_device_properties(0)
        ctx.emit(Row("environment", "gpu", "GPU", torch.cuda.get_device_name(0), note=f"{props.multi_processor_count} SMs; nvidia-smi: {smi_name} {memory}".rstrip()))
        ctx.emit(Row("environment", "gpu_memory", "GPU memory", round(props.total_memory / 2**30, 1), "GiB"))
    else:
        ctx.emit(Row("environment", "gpu", "GPU", "none used (--device cpu)", note=f"CPU, {torch.get_num_threads()} torch threads"))
    for name in ("lightning", "torchmetrics", "triton", "hydra-core", "omegaconf", "mlflow-skinny", "mlflow", "sqlalchemy", "alembic", "numpy", "pandas"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        ctx.emit(Row("environment", f"pkg_{name}", name, version))


def paper(ctx: Context) -> None:
    """`paper` (SDLM, batch 4, h_kk blended in on every batch) on the single-run path: seconds of
    a 60,000-image training pass with `trainer.compile=false` (eager) and with `auto` (on CUDA,
    torch.compile as CUDA graphs; on a CPU, eager), and pass 1, which pays for compiling."""
    single_run_speed(ctx, "paper", ctx.sizes.paper_images)


def modern(ctx: Context) -> None:
    """`modern` (Adam, batch 64) on the single-run path, timed as `paper` is."""
    single_run_speed(ctx, "modern", ctx.sizes.modern_images)


def single_run_speed(ctx: Context, preset: str, images: int) -> None:
    """The rows of `paper` and `modern`: per compile setting, pass 2 of 2 over `images` images
    scaled to 60,000 (seconds), pass 1 as measured (seconds), and eager over compiled."""
    import torch

    torch.compiler.reset()  # this part compiles as a fresh process would
    scale = MNIST_TRAIN / images
    how = f"pass 2 of 2 over {images:,} images" + (f", x {scale:.2f} (extrapolated)" if images != MNIST_TRAIN else "")
    full_pass = {}
    for setting in ("false", "auto"):
        cfg = job(ctx, f"experiment={preset}", data__train_subset=images, data__test_subset=ctx.sizes.test_images,
                  trainer__max_epochs=2, trainer__compile=setting)  # fmt: skip
        what = "eager (trainer.compile=false)" if setting == "false" else (
            "trainer.compile=auto (CUDA graphs)" if ctx.cuda else "trainer.compile=auto (eager on a CPU)")  # fmt: skip
        run = fit(cfg)
        seconds, seen = run.seconds, run.seen
        fallbacks = compile_fallbacks(seen)
        full_pass[setting] = seconds[1] * scale
        status, note = ("FAILED", "ran eagerly: " + fallbacks[0]) if fallbacks else ("OK", how)
        ctx.emit(Row(preset, f"{setting}_pass_s", f"{what}: seconds a 60,000-image pass", full_pass[setting], "s", status, note))
        ctx.emit(Row(preset, f"{setting}_first_pass_s", f"{what}: pass 1 (warm-up{', compiling' if setting == 'auto' and ctx.cuda else ''})", seconds[0], "s",
                     note=f"over {images:,} images, as measured"))  # fmt: skip
        if ctx.left() < 0:
            raise TimeoutError(f"{preset}: the part's time box ran out")
    ctx.emit(Row(preset, "speedup", "eager / auto, seconds a pass", full_pass["false"] / full_pass["auto"], "x"))


def stacking(ctx: Context) -> None:
    """K stacked `paper` models (`hydra/launcher=stacked`'s StackedTraining, every step one
    vmapped forward and backward for all K) against K sequential runs, the sequential time
    extrapolated from K = 1 (K x its time): images/s per model and for all K, and the speedup.
    Timed with `trainer.compile=auto` (CUDA graphs on CUDA) for each K in order in one process,
    as one launching process trains its stacks, and eagerly (`false`) for the smallest Ks, timed
    between the compiled K = 4 and 16 (so that a part cut short by its box keeps what the
    projection needs; eager stacks leave the compiler's caches alone). Each row's
    seconds are pass 2 of 2 over fewer images scaled to 60,000 images a model; `overhead_s`
    (SDLM's estimate before the pass and the evaluation on 10,000 test images) and
    `compile_s` (pass 1's wall time over pass 2's) feed the projection."""
    import torch

    torch.compiler.reset()
    sizes = ctx.sizes
    compiled = [("auto", k, sizes.stack_images) for k in sizes.stack_ks]
    plan = compiled[:2] + [("false", k, sizes.eager_stack_images) for k in sizes.eager_stack_ks] + compiled[2:]
    base: dict[str, float] = {}  # setting -> K=1 training seconds of its images
    for setting, k, images in plan:
        label = f"K={k} {'eager' if setting == 'false' else 'compiled' if ctx.cuda else 'auto (eager on a CPU)'}"
        key = f"stack_{setting}_k{k}"
        train_s, wall_s, seen = stack_passes(ctx, k, images, setting)
        fallbacks = compile_fallbacks(seen)
        status = "FAILED" if fallbacks else "OK"
        scale = MNIST_TRAIN / images
        note = f"pass 2 of 2 over {images:,} images a model, x {scale:.1f} (extrapolated)" + (f"; ran eagerly: {fallbacks[0]}" if fallbacks else "")
        per_model = images / train_s[1]
        ctx.emit(Row("stacking", f"{key}_train_s", f"{label}: seconds a 60,000-image pass of every model", train_s[1] * scale, "s", status, note))
        ctx.emit(Row("stacking", f"{key}_per_model", f"{label}: images/s per model", per_model, "images/s", status))
        ctx.emit(Row("stacking", f"{key}_total", f"{label}: images/s, the {k} models together", k * per_model, "images/s", status))
        if k == 1:
            base[setting] = train_s[1]
        elif setting in base:
            ctx.emit(Row("stacking", f"{key}_speedup", f"{label}: vs {k} sequential K=1 runs", k * base[setting] / train_s[1], "x", status,
                         "K x the K=1 pass time over the stack's"))  # fmt: skip
        ctx.emit(Row("stacking", f"{key}_overhead_s", f"{label}: per-pass overhead (SDLM estimate, evaluation)", wall_s[1] - train_s[1], "s", status,
                     f"pass 2's wall time less its training, {ctx.sizes.test_images or 10_000:,} test images"))  # fmt: skip
        ctx.emit(Row("stacking", f"{key}_compile_s", f"{label}: pass 1 over pass 2, wall (compiling, warm-up)", wall_s[0] - wall_s[1], "s", status))


def agreement(ctx: Context) -> None:
    """The same 2-pass `paper` run (seed 0, 5,000 images, all 10,000 test images, on the
    single-run path) on the CPU and on the device (`trainer.compile=auto`): the differences of
    its per-pass metrics and of its trained weights; then two short device runs of the same config,
    compared bit for bit, and the operations PyTorch reported as having no deterministic
    implementation (the suite trains with `torch.use_deterministic_algorithms(True,
    warn_only=True)`). FAILED when the test errors differ by more than 1 point, a run's metric is
    not finite, or a compiled run fell back to eager."""
    import math

    import torch

    torch.compiler.reset()
    sizes = ctx.sizes
    metrics = ("train_loss", "train_error", "test_error")

    def run(accelerator: str, images: int, passes: int) -> Fit:
        return fit(job(ctx, "experiment=paper", data__train_subset=images, data__test_subset=sizes.agreement_test_images,
                       trainer__max_epochs=passes, trainer__accelerator=accelerator), metrics)  # fmt: skip

    device = "gpu" if ctx.cuda else "cpu"
    cpu, dev = run("cpu", sizes.agreement_images, 2), run(device, sizes.agreement_images, 2)
    failed_compile = compile_fallbacks(dev.seen)
    for name in metrics:
        a, b = cpu.history[name], dev.history[name]
        diff = abs(a[-1] - b[-1])
        bad = not all(math.isfinite(v) for v in a + b) or (name == "test_error" and diff > 1.0)
        ctx.emit(Row("agreement", f"{name}_diff", f"{name}, pass 2: |CPU - device|", diff, "%" if "error" in name else "",
                     "FAILED" if bad else "OK",
                     f"CPU {', '.join(f'{v:.4g}' for v in a)}; device {', '.join(f'{v:.4g}' for v in b)} (passes 1, 2)"))  # fmt: skip
    ctx.emit(Row("agreement", "weights_rel_diff", "trained weights: ||CPU - device|| / ||CPU||", relative_difference(cpu.weights, dev.weights), "",
                 "FAILED" if failed_compile else "OK", ("compiled run fell back to eager: " + failed_compile[0]) if failed_compile else
                 f"float32 rounding grows over {2 * sizes.agreement_images // 4:,} SDLM steps; other kernels add in other orders"))  # fmt: skip
    first, second = run(device, sizes.probe_images, 1), run(device, sizes.probe_images, 1)
    identical = first.history == second.history and all(torch.equal(first.weights[n], second.weights[n]) for n in first.weights)
    ctx.emit(Row("agreement", "device_repeat_identical", f"two device runs ({sizes.probe_images:,} images, 1 pass): bit-identical",
                 "yes" if identical else "no", note=f"largest weight difference {max_abs_difference(first.weights, second.weights):.3g}"))  # fmt: skip
    ops = nondeterministic_ops(dev.seen + first.seen + second.seen)
    ctx.emit(Row("agreement", "nondeterministic_ops", "operations without a deterministic implementation (PyTorch's warnings)",
                 ", ".join(ops) if ops else "none reported", note="on the device runs; CUBLAS_WORKSPACE_CONFIG=" + os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset")))  # fmt: skip


def relative_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """||a - b|| / ||a|| over all tensors of two state dicts (float64)."""
    import torch

    da = torch.cat([a[n].double().flatten() for n in a])
    db = torch.cat([b[n].double().flatten() for n in a])
    return float(torch.linalg.vector_norm(da - db) / torch.linalg.vector_norm(da))


def max_abs_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def tracking(ctx: Context) -> None:
    """A real sweep through the stacked launcher: `python run.py -m hydra/launcher=stacked` over
    a few seeds of `paper` (one stack, one job alone on the single-run path; 1 pass over a small
    subset, `trainer.compile=false`: the compiled stacks are the stacking part's) into a fresh
    SQLite store, then read back: every job a FINISHED child of the sweep's parent run, with its
    metrics, its config and its model; the stacked ones tagged as a stack."""
    import mlflow

    sizes = ctx.sizes
    folder = ctx.work / "tracking"
    folder.mkdir()
    store = f"sqlite:///{folder / 'mlflow.db'}"
    command = [
        sys.executable, str(PROJECT_DIR / "run.py"), "-m", "hydra/launcher=stacked",
        f"hydra.launcher.models_per_process={sizes.tracking_models_per_process}", f"hydra.sweep.dir={folder / 'multirun'}",
        f"seed={','.join(str(s) for s in range(sizes.tracking_seeds))}", f"data.train_subset={sizes.tracking_images}",
        f"data.test_subset={sizes.tracking_test_images}", "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.compile=false",
        f"trainer.accelerator={'gpu' if ctx.cuda else 'cpu'}", f"tracking.uri={store}", f"tracking.artifact_root={folder / 'mlartifacts'}",
        "tracking.experiment=gpu_check_tracking",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=max(ctx.left(), 1))
    wall = time.perf_counter() - started
    print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", flush=True)
    ctx.emit(Row("tracking", "exit_code", "run.py exit code", done.returncode, status="OK" if done.returncode == 0 else "FAILED",
                 note=f"{sizes.tracking_seeds} seeds, hydra.launcher.models_per_process={sizes.tracking_models_per_process}"))  # fmt: skip
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("gpu_check_tracking")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    jobs = [r for r in runs if "config_hash" in r.data.tags]
    n = sizes.tracking_seeds
    expected_stack = min(n, sizes.tracking_models_per_process)
    finished = [r for r in jobs if r.info.status == "FINISHED"]
    wanted = {"train_loss", "train_error", "test_error", "epoch_time_s", "train_images_per_s"}
    with_metrics = [r for r in finished if wanted <= set(r.data.metrics)]
    children = [r for r in jobs if parents and r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stacked = [r for r in jobs if r.data.tags.get("stack.size") == str(expected_stack)]
    with_files = [r for r in finished if {"config.yaml", "model_layers.csv"} <= {a.path for a in client.list_artifacts(r.info.run_id)}]
    # MLflow 3 records a logged model as a LoggedModel whose source is the run.
    sources = {m.source_run_id for m in client.search_logged_models([experiment.experiment_id])} if experiment else set()
    models = [r for r in finished if r.info.run_id in sources]

    def check(key: str, item: str, got: int, want: int, note: str = "") -> None:
        ctx.emit(Row("tracking", key, item, f"{got}/{want}", status="OK" if got == want else "FAILED", note=note))

    check("parent", "sweep parent runs", len(parents), 1)
    check("finished", "jobs FINISHED", len(finished), n, ", ".join(sorted({r.info.status for r in jobs})) or "no runs")
    check("children", "jobs recorded as the parent's children", len(children), n)
    check("metrics", "FINISHED jobs with every per-pass metric", len(with_metrics), n, ", ".join(sorted(wanted)))
    check("stacked", f"jobs tagged stack.size={expected_stack}", len(stacked), expected_stack, "the rest trained alone")
    check("artifacts", "FINISHED jobs with config.yaml and model_layers.csv", len(with_files), n)
    check("models", "FINISHED jobs with a logged model", len(models), n)
    ctx.emit(Row("tracking", "wall_s", "the sweep's wall time (process start included)", wall, "s", note=f"{n} jobs, 1 pass over {sizes.tracking_images:,} images"))


def projection(ctx: Context) -> None:
    """A projection, not a measurement: the wall time of `python run.py -m sweep=factorial
    hydra/launcher=stacked` (conf/sweep/factorial.yaml: 20 passes over 60,000 images) on this
    device, from the stacking part's rows. The sweep's jobs are grouped as the launcher groups
    them (`grouping.partition`, 16 models a process); a stack's pass (training plus overhead) is
    interpolated linearly in K between the measured stack sizes; every stack compiles once (K =
    1's compile time: each stack of that sweep is another architecture). Recording (checkpoints,
    artifacts, models) is not counted. The second projection has every stack after the 4th
    eager, as one launching process runs them today: a stack's two compiled functions share
    torch.func.vmap's wrapper, and Dynamo stops compiling a function after 8 recompilations (its
    default limit; seen on a CPU, 'recompile_limit' in the log)."""
    from hydra import initialize_config_dir

    from hydra_plugins.lenet5_stacked_launcher.stacked_launcher import StackedLauncherConf
    from lenet5.cli import job_overrides
    from lenet5.config import CONF_DIR
    from lenet5.grouping import partition
    from lenet5.presets import compose_config

    measured = {r["key"]: r["value"] for r in read_rows(ctx.rows_file) if r["part"] == "stacking" and r["status"] == "OK" and r["value"] is not None}

    def pass_points(setting: str) -> dict[int, float]:
        """{K: seconds of one 60,000-image pass of a stack of K, overhead included}."""
        keys = [k for k in measured if k.startswith(f"stack_{setting}_k") and k.endswith("_train_s")]
        points = {int(k.removeprefix(f"stack_{setting}_k").removesuffix("_train_s")): measured[k] + measured.get(k.replace("_train_s", "_overhead_s"), 0.0) for k in keys}
        if len(points) < 2:
            raise RuntimeError(f"needs two stack sizes measured with trainer.compile={setting}; the stacking part has {sorted(points) or 'none'}")
        return points

    sweep = ["sweep=factorial", *ctx.sizes.projection_overrides]
    jobs, _ = job_overrides(["-m", *sweep])
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfgs = [compose_config(overrides) for overrides in jobs]
    groups = partition(cfgs, StackedLauncherConf.models_per_process)
    passes = int(cfgs[0].trainer.max_epochs)
    sizes = sorted({len(g) for g in groups})
    ctx.emit(Row("projection", "jobs", f"jobs of {' '.join(sweep)}", len(jobs), note=f"{len(groups)} stacks of {', '.join(map(str, sizes))} models, {passes} passes"))
    compiled, compile_s = pass_points("auto"), max(measured.get("stack_auto_k1_compile_s", 0.0), 0.0)
    for k in sizes:
        ctx.emit(Row("projection", f"pass_s_k{k}", f"a pass of a stack of {k}, compiled (training + overhead)", interpolate(compiled, k), "s", note="interpolated in K"))
    ctx.emit(Row("projection", "compile_s", "compiling, once a stack", compile_s, "s", note="K=1's pass 1 over pass 2"))
    every = sum(compile_s + passes * interpolate(compiled, len(g)) for g in groups)
    ctx.emit(Row("projection", "compiled_h", f"{' '.join(sweep)}, every stack compiled", every / 3600, "h", note="projection"))
    eager = pass_points("false")
    today = sum(compile_s + passes * interpolate(compiled, len(g)) if i < 4 else passes * interpolate(eager, len(g)) for i, g in enumerate(groups))
    ctx.emit(Row("projection", "today_h", f"{' '.join(sweep)} in one launching process today (stacks after the 4th eager)", today / 3600, "h",
                 note="projection"))  # fmt: skip


def interpolate(points: dict[int, float], k: int) -> float:
    """The value at `k` on the line through the two measured sizes around it (the two nearest
    ones beyond either end)."""
    ks = sorted(points)
    i = min(max(bisect.bisect_left(ks, k), 1), len(ks) - 1)
    lo, hi = ks[i - 1], ks[i]
    return points[lo] + (points[hi] - points[lo]) * (k - lo) / (hi - lo)


PARTS: dict[str, Callable[[Context], None]] = {
    "environment": environment, "paper": paper, "modern": modern, "stacking": stacking, "projection": projection,
    "agreement": agreement, "tracking": tracking,
}  # fmt: skip


# --- the worker: runs parts in order, one process ----------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """The rows in a rows file (other events left out)."""
    if not path.exists():
        return []
    return [
        {k: v for k, v in record.items() if k != "event"}
        for record in map(json.loads, path.read_text().splitlines())
        if record.get("event") == "row"
    ]


def worker(args: argparse.Namespace) -> int:
    """Run `args.parts` in order, each to its own deadline, writing events to `args.rows`."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS handle, as make_trainer sets it
    if args.tiny:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # a dry run on a shared CPU: spinning threads only slow it
    sizes = TINY if args.tiny else FULL
    boxes = json.loads(args.boxes)
    for part in args.parts.split(","):
        start = time.time()
        rows_file = Path(args.rows)
        _append(rows_file, {"event": "start", "part": part, "time": start})
        ctx = Context(args.device, sizes, Path(args.work), rows_file, part, min(start + boxes[part], args.deadline) - 2)
        failed = False
        try:
            if part in args.inject_failure:
                raise RuntimeError(f"injected failure (--inject-failure {part})")
            if part in args.inject_hang:
                print(f"[{part}] hanging on purpose (--inject-hang {part})", flush=True)
                time.sleep(10**6)
            PARTS[part](ctx)
        except Exception as err:
            traceback.print_exc()
            ctx.emit(Row(part, "error", "the part raised", None, status="FAILED", note=_one_line(err)))
            failed = True
        _append(rows_file, {"event": "end", "part": part, "time": time.time()})
        if failed and args.device == "cuda":
            return RESTART
    return 0


# --- the watcher: time boxes, restarts, the report ---------------------------------------------


def run_parts(args: argparse.Namespace, parts: list[str], boxes: dict[str, float], out: Path, work: Path) -> list[dict]:
    """Run `parts` in worker processes, each part in its box and all by the total deadline;
    rewrite the report after every part. Returns every row."""
    rows_file, log_path = work / "rows.jsonl", out / "gpu_check.log"
    started = time.time()
    deadline = started + boxes["total"]
    todo = list(parts)
    state = {"current": None, "since": 0.0, "offset": 0}

    def record(part: str, key: str, item: str, value: Any, unit: str, note: str) -> None:
        _append(rows_file, {"event": "row", **asdict(Row(part, key, item, value, unit, "FAILED", note))})

    def follow() -> None:
        """Read the worker's new events: which part runs since when, which ended."""
        events, state["offset"] = _new_events(rows_file, state["offset"])
        for event in events:
            if event.get("event") == "start":
                state["current"], state["since"] = event["part"], event["time"]
            elif event.get("event") == "end":
                todo.remove(event["part"])
                state["current"] = None
                print(f"{event['part']}: done in {event['time'] - state['since']:.0f} s", flush=True)
                write_report(read_rows(rows_file), parts, out, args, time.time() - started, boxes["total"])

    with log_path.open("a") as log:
        while todo:
            command = [
                sys.executable, __file__, "--worker", "--parts", ",".join(todo), "--rows", str(rows_file), "--work", str(work),
                "--device", args.device, "--boxes", json.dumps(boxes), "--deadline", str(deadline),
                *(["--tiny"] if args.tiny else []), *sum((["--inject-failure", p] for p in args.inject_failure), []),
                *sum((["--inject-hang", p] for p in args.inject_hang), []),
            ]  # fmt: skip
            log.write(f"\n=== worker for {', '.join(todo)} ===\n")
            log.flush()
            # Its own process group: a part past its box is killed with all it started (run.py, compile workers).
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_DIR)
            killed = False
            while proc.poll() is None:
                follow()
                current = state["current"]
                if current is not None and time.time() > min(state["since"] + boxes[current], deadline):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed = True
                    break
                time.sleep(0.2)
            follow()  # what the worker wrote as it ended
            current = state["current"]
            if current is not None:  # the part did not end: killed in its box, or the worker died in it
                box = min(boxes[current], deadline - state["since"])
                if killed:
                    record(current, "timeout", "time box", round(box), "s", f"killed after {box:.0f} s; rows above it were measured before")
                else:
                    record(current, "died", "worker process", proc.returncode, "", f"the worker exited with {proc.returncode} in this part; see gpu_check.log")
                print(f"{current}: FAILED ({'time box' if killed else 'worker died'})", flush=True)
                todo.remove(current)
                state["current"] = None
            elif todo and proc.returncode != RESTART:
                record(todo[0], "died", "worker process", proc.returncode, "", "the worker exited before this part began; see gpu_check.log")
                todo.pop(0)
            if todo and time.time() > deadline:
                for part in todo:
                    record(part, "timeout", "time box", 0, "s", "not run: the whole check's time box was spent")
                todo.clear()
            write_report(read_rows(rows_file), parts, out, args, time.time() - started, boxes["total"])
    return read_rows(rows_file)


def _new_events(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete JSON lines of `path` after byte `offset`, and the offset after them."""
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.decode().splitlines() if line.strip()], offset + len(complete)


def write_report(rows: list[dict], parts: list[str], out: Path, args: argparse.Namespace, seconds: float, box: float) -> None:
    """`gpu_check.md` (a table a part, under the part's docstring) and `gpu_check.csv` (every row)."""
    failed = [p for p in parts if any(r["part"] == p and r["status"] == "FAILED" for r in rows)]
    missing = [p for p in parts if not any(r["part"] == p for r in rows)]
    env = {r["key"]: r["value"] for r in rows if r["part"] == "environment"}
    verdict = (f"FAILED: {', '.join(failed)}" if failed else "every part OK") + (f"; not run yet: {', '.join(missing)}" if missing else "")
    lines = [
        "# GPU check (`benchmarks/gpu_check.py`)",
        "",
        f"Device `{args.device}`{' (--tiny: a dry run, its numbers mean nothing)' if args.tiny else ''}: {env.get('gpu', '?')}, torch {env.get('torch', '?')}, "
        f"CUDA {env.get('cuda_build', '?')}, driver {env.get('driver', '?')}. {seconds:.0f} s of a {box:.0f} s time box, "
        f"written {time.strftime('%Y-%m-%d %H:%M:%S')}. Result: **{verdict}**.",
        "",
        "Seconds a 60,000-image pass are training batches only (no evaluation), synchronised; a note saying "
        "'extrapolated' means pass 2 of 2 over fewer images, scaled to 60,000. Every part's output is in gpu_check.log.",
    ]
    for part in parts:
        part_rows = [r for r in rows if r["part"] == part]
        status = "FAILED" if part in failed else ("not run" if not part_rows else "OK")
        doc = " ".join((PARTS[part].__doc__ or "").split())
        lines += ["", f"## {part}: {status}", "", doc, "", "| item | value | unit | status | note |", "| --- | ---: | --- | --- | --- |"]
        cells = lambda r: (r["item"], _shown(r["value"]), r["unit"], r["status"], r["note"])  # noqa: E731
        lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells(r)) + " |" for r in part_rows]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    with (out / "gpu_check.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(Row)])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a dry run: every part shrunk to seconds (numbers mean nothing)")
    parser.add_argument("--out", type=Path, help="folder for gpu_check.{md,csv,log} (default results/, for the real run only)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, in this order: {','.join(PARTS)}")
    parser.add_argument("--time-box", action="append", default=[], metavar="PART=S", help="seconds a part (or total) may take")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (stores, Hydra outputs)")
    parser.add_argument("--inject-failure", action="append", default=[], metavar="PART", help="test hook: PART raises")
    parser.add_argument("--inject-hang", action="append", default=[], metavar="PART", help="test hook: PART sleeps past its box")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--boxes", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in parts]
    boxes = dict(TINY_TIME_BOXES if args.tiny else TIME_BOXES)
    for setting in args.time_box:
        name, _, seconds = setting.partition("=")
        if name not in boxes:
            parser.error(f"--time-box {setting}: name a part or total")
        boxes[name] = float(seconds)
    if args.out is None:
        if args.tiny or args.device != "cuda":
            parser.error("a dry run (--tiny or --device cpu) needs --out: it never writes into results/")
        args.out = PROJECT_DIR / "results"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.log").write_text("")
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        rows = run_parts(args, parts, boxes, args.out, work)
    finally:
        if not args.keep_work:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    failed = sorted({r["part"] for r in rows if r["status"] == "FAILED"}, key=parts.index)
    print((args.out / "gpu_check.md").read_text())
    print(f"gpu check: {'FAILED: ' + ', '.join(failed) if failed else 'every part OK'} ({args.out / 'gpu_check.md'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
