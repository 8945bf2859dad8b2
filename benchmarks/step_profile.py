"""Where a single run's training step goes: `train.train` under cProfile, its costs in ms per step.

    MNIST_ROOT=../shared/data OMP_NUM_THREADS=1 python benchmarks/step_profile.py [--images 2000] experiment=paper
    MNIST_ROOT=../shared/data OMP_NUM_THREADS=1 python benchmarks/step_profile.py --images 6400 experiment=modern

Trains one run of the preset (the Hydra overrides after the options) through the single-run
path (Lightning module, callbacks, MLflow run in a temporary store), `--passes` passes over
`--images` training images, twice: once plain, timed by `gpu_throughput.PassClock` (the last
pass's training batches), and once under cProfile, which a callback added to the run's
Trainer switches on once a pass's start hooks have run and off when its evaluation starts, so
the profile holds the training steps only. Run it with `PYTHONPATH=<tree>/src` to profile
another checkout (the rows find their functions by file and name, so they read any commit of
the suite).

Both clocks are the training thread's CPU time (`time.thread_time`), not the wall clock: on
cores that other jobs share, the wall clock counts their time too. Prints, per cost, the
profiled milliseconds per training step (the cumulative time of the
functions named in `COSTS`, over every step of every pass, divided by the steps): the SDLM
curvature pass on each batch, the forward pass and loss, the running training metrics, the
backward pass, the optimizer, the progress bar, our callbacks, the data feed, Lightning's
per-step logging, and Lightning's loop (what is left of a step). cProfile adds about a
microsecond or two to every Python call (a CPU-time clock read is a system call), so the
Python-heavy rows (Lightning's loop most) read high; the line above the table gives the
unprofiled ms per step beside the profiled one.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import lightning as L

from gpu_throughput import PassClock
from lenet5 import train as single_run
from lenet5.presets import compose_config

#: cost -> the functions it is the cumulative time of, as (end of the file's path, function
#: name); a function that a commit lacks adds nothing. Only the training steps are profiled
#: (ProfileSteps), so `predict` and the metrics' updates are those of training_step.
COSTS = {
    "SDLM curvature (per batch)": [("lenet5/callbacks.py", "on_train_batch_start")],
    "forward, loss": [("lenet5/module.py", "training_step")],
    "training metrics (loss, error)": [("torchmetrics/metric.py", "wrapped_func"), ("lenet5/module.py", "tally"), ("lenet5/model/lenet5.py", "predict")],
    "backward": [("torch/_tensor.py", "backward")],
    "zero_grad": [("torch/optim/optimizer.py", "zero_grad")],
    "optimizer update": [("lenet5/sdlm.py", "step"), ("torch/optim/adam.py", "step"), ("torch/optim/sgd.py", "step")],
    "progress bar": [("progress/tqdm_progress.py", "on_train_batch_end"), ("progress/tqdm_progress.py", "on_train_batch_start")],
    "throughput callback": [("lenet5/callbacks.py", "on_train_batch_end")],
    "data feed": [("lenet5/batches.py", "__iter__"), ("lenet5/distortions.py", "__iter__"), ("fabric/utilities/apply_func.py", "move_data_to_device")],
    "Lightning's per-step logging": [("logger_connector/logger_connector.py", "update_train_step_metrics")],
}
#: Lightning's automatic optimization runs training_step, zero_grad and backward inside the
#: optimizer's step (as its closure): each row is counted once, outside the rows that call it.
CLOSURE = [("optimization/automatic.py", "__call__")]
INSIDE = {"forward, loss": ["training metrics (loss, error)"]}
LOOP = "Lightning's loop (the rest of a step)"
STEP = ("loops/training_epoch_loop.py", "advance")


def configure(overrides: list[str], args, store: str, experiment: str):
    settings = {
        "data.train_subset": args.images, "data.test_subset": 500, "trainer.max_epochs": args.passes,
        "trainer.accelerator": "cpu", "trainer.progress_bar": str(args.progress_bar).lower(),
        "tracking.uri": store, "tracking.experiment": experiment, **dict(o.split("=", 1) for o in args.set),
    }  # fmt: skip
    return compose_config([*overrides, *(f"{k}={v}" for k, v in settings.items())])


class ProfileSteps(L.Callback):
    """Profiles the training steps of each pass: on after every other callback's pass-start hook
    (this one goes last), off as the pass's evaluation starts."""

    def __init__(self, profile: cProfile.Profile):
        self.profile = profile

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.profile.enable()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.profile.disable()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.profile.disable()  # a run without evaluation


def train_once(overrides: list[str], args, folder: Path, profile: cProfile.Profile | None) -> tuple[float, int]:
    """(CPU seconds of the last pass's training batches, steps a pass) of one run."""
    from lenet5.jobs import train

    store, experiment = f"sqlite:///{folder / 'mlflow.db'}", f"profile{time.time_ns()}"
    cfg = configure(overrides, args, store, experiment)
    make_trainer, timer = single_run.make_trainer, PassClock(time.thread_time)

    def observed_trainer(*a, **kw):
        trainer = make_trainer(*a, **kw)
        trainer.callbacks.insert(0, timer)
        if profile is not None:
            trainer.callbacks.append(ProfileSteps(profile))
        return trainer

    single_run.make_trainer = observed_trainer
    try:
        train(cfg)
    finally:
        single_run.make_trainer = make_trainer
    steps = -(-min(args.images, 60_000) // int(cfg.data.batch_size))
    return timer.seconds[-1], steps


def cumulative(stats: pstats.Stats, functions: list[tuple[str, str]]) -> float:
    """Seconds spent inside any of `functions` (outermost calls only, so recursion is not doubled)."""
    total = 0.0
    for (path, _, name), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(path.replace("\\", "/").endswith(end) and name == fn for end, fn in functions):
            total += cumtime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training images per pass")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--progress-bar", action="store_true", help="with Lightning's progress bar (as `make run` has it)")
    parser.add_argument("--set", action="append", default=[], help="another config setting, key=value (repeatable)")
    parser.add_argument("--top", type=int, default=0, help="also print cProfile's N costliest functions by own time")
    parser.add_argument("--dump", type=Path, help="also write the profile there (pstats format)")
    parser.add_argument("overrides", nargs="*", default=["experiment=paper"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        plain_s, steps = train_once(args.overrides, args, Path(tmp), None)
        profile = cProfile.Profile(time.thread_time)
        profiled_s, _ = train_once(args.overrides, args, Path(tmp), profile)
    stats = pstats.Stats(profile)
    if args.dump:
        stats.dump_stats(args.dump)
    all_steps = steps * args.passes
    step_ms = 1000 * cumulative(stats, [STEP]) / all_steps
    rows = {what: 1000 * cumulative(stats, functions) / all_steps for what, functions in COSTS.items()}
    for outer, inner in INSIDE.items():
        rows[outer] -= sum(rows[i] for i in inner)
    rows["optimizer update"] -= 1000 * cumulative(stats, CLOSURE) / all_steps
    rows[LOOP] = step_ms - sum(rows.values())
    print(
        f"\n{' '.join(args.overrides)} {' '.join(args.set)}, {args.images} images a pass, {steps} steps a pass, {args.passes} passes: "
        f"{1000 * plain_s / steps:.2f} ms a step unprofiled (CPU time, last pass), "
        f"{1000 * profiled_s / steps:.2f} profiled; the profile's step {step_ms:.2f} ms:\n"
    )
    print("| cost | ms per step (profiled) | share |")
    print("| --- | ---: | ---: |")
    for what, ms in rows.items():
        print(f"| {what} | {ms:.3f} | {100 * ms / step_ms:.0f} % |")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
