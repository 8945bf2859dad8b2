"""What SDLM's mini-batch form buys over the paper's pure stochastic updates, measured side by
side in one run through the real training path (Lightning module, SDLM, h_kk re-estimate).

    MNIST_ROOT=../shared/data python benchmarks/sdlm_speed.py [--patterns 3000] [--batch-size 32] [--repeats 2]

Trains the `paper` preset for one pass over the first N and 2N training images at batch 1
(N = `--patterns`) and at `--batch-size` (N = 10 x `--patterns`, so both passes last long
enough to time), alternating, `--repeats` times each, and reads the logged
`epoch_time_s`. The difference of the two passes gives the cost per pattern; what is left is
the fixed cost of a pass (the h_kk estimate on 500 patterns, Lightning's epoch hooks). Prints
both, the time of a 60,000-pattern pass, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import mlflow

from lenet5.presets import compose_config
from lenet5.train import train

PASS = 60_000


def pass_seconds(batch_size: int, patterns: int, store: str, artifacts: Path) -> float:
    cfg = compose_config(
        [
            "experiment=paper", f"data.batch_size={batch_size}", f"data.train_subset={patterns}",
            "data.test_subset=1000", "trainer.max_epochs=1", "trainer.progress_bar=false",
            f"tracking.uri={store}", f"tracking.artifact_root={artifacts}", "tracking.experiment=sdlm-speed",
        ]
    )  # fmt: skip
    run_id = train(cfg)["run_id"]
    return mlflow.MlflowClient(store).get_run(run_id).data.metrics["epoch_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    patterns = {1: args.patterns, args.batch_size: 10 * args.patterns}
    per_pattern: dict[int, list[float]] = {1: [], args.batch_size: []}
    fixed: dict[int, list[float]] = {1: [], args.batch_size: []}
    with tempfile.TemporaryDirectory() as tmp:
        store, artifacts = f"sqlite:///{Path(tmp) / 'mlflow.db'}", Path(tmp) / "artifacts"
        for _ in range(args.repeats):
            for batch_size in per_pattern:  # alternate, so drifts in machine load hit both
                n = patterns[batch_size]
                short, long = (pass_seconds(batch_size, count, store, artifacts) for count in (n, 2 * n))
                per_pattern[batch_size].append((long - short) / n)
                fixed[batch_size].append(short - n * per_pattern[batch_size][-1])
    full_pass = {b: statistics.median(fixed[b]) + PASS * statistics.median(per_pattern[b]) for b in per_pattern}
    for batch_size in per_pattern:
        runs = ", ".join(f"{1e3 * s:.3f}" for s in per_pattern[batch_size])
        print(f"batch {batch_size:>3}: {1e3 * statistics.median(per_pattern[batch_size]):.3f} ms a pattern (runs: {runs}) "
              f"+ {statistics.median(fixed[batch_size]):.1f} s fixed a pass -> {full_pass[batch_size]:.0f} s a {PASS:,}-pattern pass")  # fmt: skip
    print(f"mini-batch form ({args.batch_size}) is {full_pass[1] / full_pass[args.batch_size]:.1f}x faster a pass than batch 1")


if __name__ == "__main__":
    main()
