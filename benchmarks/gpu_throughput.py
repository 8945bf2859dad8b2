"""Training throughput, images per second per model, of the ways the suite can train, side by side.

    MNIST_ROOT=../shared/data python benchmarks/gpu_throughput.py [--device cuda] [--images 10000] [--ks 1,4,16,64]
    MNIST_ROOT=../shared/data OMP_NUM_THREADS=1 python benchmarks/gpu_throughput.py --device cpu --images 512 --ks 1,4,16 --compiled-ks 4

Rows, each on the same network, loss, optimizer, batch size and training images (the Hydra
overrides after `--`, default: the paper's network with SGD, `experiment=paper variant=optim_sgd`,
at `--batch-size` 32):

- `plain loop`: a hand-written PyTorch loop (forward, loss, backward, optimizer step; SDLM's
  curvature as the suite computes it), the floor of per-step overhead;
- `suite eager` / `suite compiled`: `train.train` itself (Lightning module, callbacks, MLflow
  run in a temporary store) with `trainer.compile=false` / `true` (on a GPU: CUDA graphs);
- `stacked K=k`: `StackedTraining`, k models (seeds 0..k-1) in one process, k batches a step;
  `stacked K=k compiled` (`--compiled-ks`): the same with its whole step compiled (`trainer.compile=true`).

Every row trains two passes over `--images` training images and times the second (the first
pays for warm-up and compilation), training batches only (no evaluation, as `epoch_time_s`).
Prints images/s per model and in aggregate, and each as a ratio to the plain loop.

`--clock cpu` times the plain loop and the suite by the CPU time of the training thread
(`time.thread_time`) instead of the wall clock: on cores that other jobs share, the wall
clock also counts the time they hold the core, which makes two rows timed a minute apart
differ by 2x; the thread's CPU time does not (one torch thread, OMP_NUM_THREADS=1, so the
thread does all the work). `--rounds` repeats the plain and suite rows, alternating, and
prints each round and the median ratio. Stacks keep the wall clock (leave them out with `--ks ""`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import mlflow
import torch

from lenet5.presets import compose_config

DEFAULT_OVERRIDES = ["experiment=paper", "variant=optim_sgd"]


def job(overrides: list[str], args, **extra: str):
    settings = {
        "data.train_subset": args.images, "data.test_subset": 100, "data.batch_size": args.batch_size,
        "trainer.max_epochs": 2, "trainer.progress_bar": "false", "trainer.accelerator": "gpu" if args.device == "cuda" else "cpu",
        **extra,
    }  # fmt: skip
    return compose_config([*overrides, *(f"{k}={v}" for k, v in settings.items())])


#: The clock rows are timed by (`--clock`): wall (perf_counter) or the thread's CPU time.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def plain_loop(cfg, device: torch.device, clock=time.perf_counter) -> float:
    """Seconds of pass 2 of a hand-written loop, by `clock`."""
    from lenet5.config import OptimName, as_config
    from lenet5.data import MNISTDataModule
    from lenet5.losses import make_loss
    from lenet5.model.lenet5 import LeNet5
    from lenet5.optim import make_optimizer
    from lenet5.sdlm import gauss_newton_diagonal

    cfg = as_config(cfg)
    data = MNISTDataModule(cfg.data, seed=cfg.seed)
    data.setup()
    images, labels = (t.to(device) for t in data.splits["train"])
    torch.manual_seed(cfg.seed)
    model = LeNet5(cfg.model, data.input_size).to(device)
    loss_fn = make_loss(cfg.loss, model.head_kind)
    optimizer = make_optimizer(model.parameters(), cfg.optim, cfg.data.batch_size)
    sdlm = cfg.optim.name == OptimName.sdlm
    gamma, b = cfg.optim.curvature_gamma, cfg.data.batch_size
    seconds = 0.0
    for _ in range(2):
        if sdlm:
            sample = images[torch.randperm(len(images), device=device)[: cfg.optim.curvature_samples]]
            curvature = gauss_newton_diagonal(model, sample)
            optimizer.set_curvature({p: curvature[n] for n, p in model.named_parameters() if n in curvature})
        synchronize(device)
        started = clock()
        order = torch.randperm(len(images), device=device)
        for start in range(0, len(images), b):
            index = order[start : start + b]
            x, y = images[index], labels[index]
            if sdlm and gamma > 0:
                curvature = gauss_newton_diagonal(model, x)
                optimizer.set_curvature({p: curvature[n] for n, p in model.named_parameters() if n in curvature}, 1 - (1 - gamma) ** len(x))
            loss = loss_fn(model(x), y).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)
        seconds = clock() - started
    return seconds


class PassClock(L.Callback):
    """Times each pass's training batches by `clock`, as `epoch_time_s` does by the wall clock:
    first batch start to last batch end (`seconds`, one entry a pass)."""

    def __init__(self, clock):
        self.clock, self.seconds = clock, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.started = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.finished = self.clock()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self.finished - self.started)


def suite(cfg, folder: Path, clock=None) -> float:
    """Seconds of pass 2 of `train.train`: its logged `epoch_time_s`, or by `clock` (a
    `PassClock` added to the run's Trainer, first among the callbacks' batch-start hooks)."""
    from lenet5 import train as single_run
    from lenet5.jobs import train

    store = f"sqlite:///{folder / 'mlflow.db'}"
    cfg.tracking.uri, cfg.tracking.artifact_root, cfg.tracking.experiment = store, str(folder / "artifacts"), f"bench{time.time_ns()}"
    make_trainer, timer = single_run.make_trainer, PassClock(clock)
    if clock is not None:

        def timed_trainer(*args, **kwargs):
            trainer = make_trainer(*args, **kwargs)
            trainer.callbacks.insert(0, timer)  # starts before the SDLM callback's per-batch curvature
            return trainer

        single_run.make_trainer = timed_trainer
    try:
        run_id = train(cfg)["run_id"]
    finally:
        single_run.make_trainer = make_trainer
    if clock is not None:
        return timer.seconds[1]
    return {m.step: m.value for m in mlflow.MlflowClient(store).get_metric_history(run_id, "epoch_time_s")}[2]


def stacked(cfgs, device: torch.device) -> float:
    """Seconds of pass 2 of K models trained as one stack."""
    from lenet5.stacked import StackedTraining
    from lenet5.jobs import prepare

    prepared = [prepare(c, check_data=i == 0, check_tracking=False) for i, c in enumerate(cfgs)]
    data = prepared[0][0]
    data.setup()
    data.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in data.splits.items()}
    results = list(StackedTraining([m for _, m in prepared], data, device).passes())
    return results[1].metrics[0]["epoch_time_s"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=10_000, help="training images per pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ks", default="1,4,16,64", help="stack sizes, comma-separated")
    parser.add_argument("--skip-compiled", action="store_true", help="leave out the compiled suite (its compilation takes minutes on a CPU)")
    parser.add_argument("--compiled-ks", default="", help="stack sizes to time also with trainer.compile=true, comma-separated")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="time the plain and suite rows by wall or thread CPU time")
    parser.add_argument("--rounds", type=int, default=1, help="plain and suite rows this many times, alternating (medians printed)")
    parser.add_argument("overrides", nargs="*", help=f"Hydra overrides for every row (default: {' '.join(DEFAULT_OVERRIDES)})")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT_OVERRIDES
    device = torch.device(args.device)
    ks = [int(k) for k in args.ks.split(",") if k]
    clock = CLOCKS[args.clock]
    suite_clock = clock if args.clock != "wall" else None
    rows: list[tuple[str, int, float]] = []  # (what, models, seconds of one pass)
    with tempfile.TemporaryDirectory() as tmp:
        rounds: dict[str, list[float]] = {"plain loop": [], "suite eager": [], "suite compiled": []}
        for round_ in range(args.rounds):
            rounds["plain loop"].append(plain_loop(job(overrides, args), device, clock))
            rounds["suite eager"].append(suite(job(overrides, args, **{"trainer.compile": "false"}), Path(tmp), suite_clock))
            if not args.skip_compiled:
                rounds["suite compiled"].append(suite(job(overrides, args, **{"trainer.compile": "true"}), Path(tmp), suite_clock))
            if args.rounds > 1:
                plain = rounds["plain loop"][-1]
                print(f"round {round_ + 1}: " + ", ".join(f"{what} {args.images / t[-1]:,.0f} images/s ({plain / t[-1]:.2f}x)" for what, t in rounds.items() if t), flush=True)
        for what, seconds in rounds.items():
            if seconds:
                rows.append((what, 1, statistics.median(seconds)))
        for k in ks:
            rows.append((f"stacked K={k}", k, stacked([job(overrides, args, seed=str(s)) for s in range(k)], device)))
        for k in [int(k) for k in args.compiled_ks.split(",") if k]:
            cfgs = [job(overrides, args, seed=str(s), **{"trainer.compile": "true"}) for s in range(k)]
            rows.append((f"stacked K={k} compiled", k, stacked(cfgs, device)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    timing = f"{args.clock} clock" + (f", median of {args.rounds} alternating rounds" if args.rounds > 1 else "")
    print(f"\n{' '.join(overrides)}, batch {args.batch_size}, {args.images} images a pass, on {name} (torch {torch.__version__}), {timing}\n")
    base = args.images / rows[0][2]
    print("| training | models | images/s per model | images/s, all models | per model vs plain | all vs plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for what, k, seconds in rows:
        per_model = args.images / seconds
        print(f"| {what} | {k} | {per_model:,.0f} | {k * per_model:,.0f} | {per_model / base:.2f}x | {k * per_model / base:.2f}x |")


if __name__ == "__main__":
    main()
