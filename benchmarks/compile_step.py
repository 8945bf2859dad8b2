"""One network's forward and backward, eager against `torch.compile`d, on one CPU thread: does
compiling a single run's step pay here?

    OMP_NUM_THREADS=1 python benchmarks/compile_step.py experiment=paper --batch-size 4
    OMP_NUM_THREADS=1 python benchmarks/compile_step.py experiment=modern --batch-size 64 --both-determinism

What `trainer.compile=true` compiles in a single run (module.py): the network's forward, and
through AOTAutograd its backward, here on random images (B, 1, 32, 32) and labels with the
preset's loss, without Lightning, the optimizer or SDLM's curvature pass. Times each by the
thread's CPU time (`time.thread_time`: other jobs on the cores do not count), best of 3 x 100
steps after 20 warm-up steps (the compile is in the warm-up), with `torch.use_deterministic_algorithms`
on (what `trainer.deterministic` sets) and, with `--both-determinism`, off.
"""

from __future__ import annotations

import argparse
import time

import torch

from lenet5.config import as_config
from lenet5.losses import make_loss
from lenet5.model.lenet5 import LeNet5
from lenet5.presets import compose_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--both-determinism", action="store_true", help="also with deterministic algorithms off")
    parser.add_argument("overrides", nargs="*", default=["experiment=paper"])
    args = parser.parse_args()
    cfg = as_config(compose_config(args.overrides))
    torch.manual_seed(0)
    model = LeNet5(cfg.model, 32)
    loss_fn = make_loss(cfg.loss, model.head_kind)
    images, labels = torch.randn(args.batch_size, 1, 32, 32), torch.randint(0, 10, (args.batch_size,))

    def step(network) -> None:
        loss = loss_fn(network(images), labels).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    for deterministic in (True, False) if args.both_determinism else (True,):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        ms = {}
        for name, network in (("eager", model), ("compiled", torch.compile(model))):
            for _ in range(20):
                step(network)
            best = []
            for _ in range(3):
                started = time.thread_time()
                for _ in range(100):
                    step(network)
                best.append(1000 * (time.thread_time() - started) / 100)
            ms[name] = min(best)
        print(
            f"{' '.join(args.overrides)}, batch {args.batch_size}, deterministic {deterministic}: forward and backward "
            f"eager {ms['eager']:.2f} ms, compiled {ms['compiled']:.2f} ms (compiled/eager {ms['compiled'] / ms['eager']:.2f})"
        )


if __name__ == "__main__":
    main()
