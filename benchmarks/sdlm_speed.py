"""What SDLM's mini-batch form buys over the paper's pure stochastic updates, measured side by
side in one run through the real training path (Lightning module, SDLM, h_kk re-estimate).

    MNIST_ROOT=../shared/data python benchmarks/sdlm_speed.py [--patterns 3000] [--batch-size 4] [--repeats 2]
    MNIST_ROOT=../shared/data python benchmarks/sdlm_speed.py --running-average [--batch-size 4]

Trains the `paper` preset (its SDLM as configured, running average included) for one pass
over the first N and 2N training images at batch 1
(N = `--patterns`) and at `--batch-size` (N = 10 x `--patterns`, so both passes last long
enough to time), alternating, `--repeats` times each, and reads the logged
`epoch_time_s`. The difference of the two passes gives the cost per pattern; what is left is
the fixed cost of a pass (the h_kk estimate on 500 patterns, Lightning's epoch hooks). Prints
both, the time of a 60,000-pattern pass, and the ratio.

`--running-average` compares instead, at `--batch-size` both: h_kk before each pass only
(`optim.curvature_gamma=0`) against SN2.8's running average (gamma 0.05, a curvature estimate
on every batch), N = 10 x `--patterns` for each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import mlflow

from lenet5.presets import compose_config
from lenet5.jobs import train

PASS = 60_000


def pass_seconds(batch_size: int, patterns: int, store: str, artifacts: Path, gamma: float | None = None) -> float:
    """`epoch_time_s` of one pass of the `paper` preset (its own curvature_gamma when `gamma` is None)."""
    cfg = compose_config(
        [
            "experiment=paper", f"data.batch_size={batch_size}", f"data.train_subset={patterns}",
            *([f"optim.curvature_gamma={gamma}"] if gamma is not None else []),
            "data.test_subset=1000", "trainer.max_epochs=1", "trainer.progress_bar=false",
            f"tracking.uri={store}", f"tracking.artifact_root={artifacts}", "tracking.experiment=sdlm-speed",
        ]
    )  # fmt: skip
    run_id = train(cfg)["run_id"]
    return mlflow.MlflowClient(store).get_run(run_id).data.metrics["epoch_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--running-average", action="store_true", help="gamma 0 vs 0.05 at --batch-size")
    args = parser.parse_args()
    if args.running_average:  # (label, batch size, gamma, N)
        settings = [("gamma 0   ", args.batch_size, 0.0, 10 * args.patterns), ("gamma 0.05", args.batch_size, 0.05, 10 * args.patterns)]
    else:
        # The preset as it runs (running average included), at batch 1 and at --batch-size.
        settings = [(f"batch {1:>3}", 1, None, args.patterns), (f"batch {args.batch_size:>3}", args.batch_size, None, 10 * args.patterns)]
    per_pattern: dict[str, list[float]] = {label: [] for label, *_ in settings}
    fixed: dict[str, list[float]] = {label: [] for label, *_ in settings}
    with tempfile.TemporaryDirectory() as tmp:
        store, artifacts = f"sqlite:///{Path(tmp) / 'mlflow.db'}", Path(tmp) / "artifacts"
        for _ in range(args.repeats):
            for label, batch_size, gamma, n in settings:  # alternate, so drifts in machine load hit both
                short, long = (pass_seconds(batch_size, count, store, artifacts, gamma) for count in (n, 2 * n))
                per_pattern[label].append((long - short) / n)
                fixed[label].append(short - n * per_pattern[label][-1])
    full_pass = {label: statistics.median(fixed[label]) + PASS * statistics.median(per_pattern[label]) for label in per_pattern}
    for label in per_pattern:
        runs = ", ".join(f"{1e3 * s:.3f}" for s in per_pattern[label])
        print(f"{label}: {1e3 * statistics.median(per_pattern[label]):.3f} ms a pattern (runs: {runs}) "
              f"+ {statistics.median(fixed[label]):.1f} s fixed a pass -> {full_pass[label]:.0f} s a {PASS:,}-pattern pass")  # fmt: skip
    (first, *_), (second, *_) = settings
    print(f"{second} takes {full_pass[second] / full_pass[first]:.2f}x the time of {first} a pass")


if __name__ == "__main__":
    main()
