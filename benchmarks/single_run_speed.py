"""A single run's speed at two commits, measured side by side in one run: is a change to the
training path free?

    MNIST_ROOT=../shared/data python benchmarks/single_run_speed.py --before REV [--after WORKTREE] [--rounds 3]

Checks REV out into a temporary `git worktree`, then alternates, `--rounds` times, one
`python run.py` of the `paper` preset (SDLM, 3 passes over `--images` training images, the
whole pipeline: the run's setup, its per-pass checkpoint commits, its artifacts) from each
tree, each into its own fresh MLflow store, in subprocesses of this interpreter with the
tree's `src/` first on the path. Alternating spreads the machine's drift over both sides.

Prints, per side, the median over rounds of the training seconds per pass (the runs' logged
`epoch_time_s`), of `checkpoint_s` and of the subprocess's wall time, and the ratios after /
before; no threshold is asserted here (the machines are noisy), the reader judges the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]


def one_run(tree: Path, images: int, store_dir: Path) -> dict[str, float]:
    """Train once from `tree`; {"epoch_time_s": median per pass, "checkpoint_s": median, "wall_s": total}."""
    store = f"sqlite:///{store_dir / 'mlflow.db'}"
    args = [
        "experiment=paper", f"data.train_subset={images}", "data.test_subset=2000", "trainer.max_epochs=3",
        "trainer.progress_bar=false", f"tracking.uri={store}", "tracking.experiment=speed",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(tree / "run.py"), *args], cwd=store_dir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"run from {tree} failed:\n{done.stderr[-3000:]}")
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("speed").experiment_id])
    history = lambda key: [m.value for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    return {"epoch_time_s": statistics.median(history("epoch_time_s")), "checkpoint_s": statistics.median(history("checkpoint_s") or [0.0]), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare against (checked out into a temporary worktree)")
    parser.add_argument("--after", type=Path, default=ROOT, help="the tree to measure (default: this checkout, as it is)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        before = Path(scratch) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True, capture_output=True)
        try:
            sides = {"before": before, "after": args.after.resolve()}
            measured: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
            for round_ in range(args.rounds):
                for side, tree in sides.items():
                    store_dir = Path(scratch) / f"{side}{round_}"
                    store_dir.mkdir()
                    measured[side].append(one_run(tree, args.images, store_dir))
                    print(f"round {round_ + 1} {side}: " + ", ".join(f"{k} {v:.3f}" for k, v in measured[side][-1].items()), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)

    print(f"\nmedians over {args.rounds} rounds, before = {args.before}, after = {args.after}:")
    for key in ("epoch_time_s", "checkpoint_s", "wall_s"):
        b, a = (statistics.median(m[key] for m in measured[side]) for side in ("before", "after"))
        print(f"  {key:13s} before {b:8.3f}  after {a:8.3f}  after/before {a / b if b else float('nan'):.3f}")


if __name__ == "__main__":
    main()
