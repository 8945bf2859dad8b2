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
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

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


def plain_loop(cfg, device: torch.device) -> float:
    """Seconds of pass 2 of a hand-written loop."""
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
        started = time.perf_counter()
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
        seconds = time.perf_counter() - started
    return seconds


def suite(cfg, folder: Path) -> float:
    """Seconds of pass 2 of `train.train` (its logged `epoch_time_s`)."""
    from lenet5.jobs import train

    store = f"sqlite:///{folder / 'mlflow.db'}"
    cfg.tracking.uri, cfg.tracking.artifact_root, cfg.tracking.experiment = store, str(folder / "artifacts"), f"bench{time.time_ns()}"
    run_id = train(cfg)["run_id"]
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
    parser.add_argument("overrides", nargs="*", help=f"Hydra overrides for every row (default: {' '.join(DEFAULT_OVERRIDES)})")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT_OVERRIDES
    device = torch.device(args.device)
    ks = [int(k) for k in args.ks.split(",")]
    rows: list[tuple[str, int, float]] = []  # (what, models, seconds of one pass)
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("plain loop", 1, plain_loop(job(overrides, args), device)))
        rows.append(("suite eager", 1, suite(job(overrides, args, **{"trainer.compile": "false"}), Path(tmp))))
        if not args.skip_compiled:
            rows.append(("suite compiled", 1, suite(job(overrides, args, **{"trainer.compile": "true"}), Path(tmp))))
        for k in ks:
            rows.append((f"stacked K={k}", k, stacked([job(overrides, args, seed=str(s)) for s in range(k)], device)))
        for k in [int(k) for k in args.compiled_ks.split(",") if k]:
            cfgs = [job(overrides, args, seed=str(s), **{"trainer.compile": "true"}) for s in range(k)]
            rows.append((f"stacked K={k} compiled", k, stacked(cfgs, device)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"\n{' '.join(overrides)}, batch {args.batch_size}, {args.images} images a pass, on {name} (torch {torch.__version__})\n")
    base = args.images / rows[0][2]
    print("| training | models | images/s per model | images/s, all models | per model vs plain | all vs plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for what, k, seconds in rows:
        per_model = args.images / seconds
        print(f"| {what} | {k} | {per_model:,.0f} | {k * per_model:,.0f} | {per_model / base:.2f}x | {k * per_model / base:.2f}x |")


if __name__ == "__main__":
    main()
