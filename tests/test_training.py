"""Real training on small real MNIST subsets: every preset learns, combinations compose, runs are reproducible."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
from scipy.stats import binomtest

from lenet5.jobs import prepare, train

from .helpers import compose, small_overrides

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

PRESETS = ["paper", "modern", "seed001_tutorial", "seed004_tf"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_beats_chance_on_a_small_subset(preset, store):
    result = train(compose(f"experiment={preset}", *small_overrides(store)))  # one pass over 2,000 images, 1,000 test images
    correct = round(1000 * (1 - result["test_error"] / 100))
    # One-sided binomial test against guessing (10% right): "clearly" means p < 1e-9.
    assert binomtest(correct, 1000, 0.1, alternative="greater").pvalue < 1e-9, f"{preset}: {result['test_error']:.1f}%"


# A spread of factor combinations: every level of every factor appears at least once.
COMBINATIONS = [
    dict(zip(("model.pool", "model.activation", "model.c3", "model.init", "model.activation_at"), values))
    for values in [
        ("subsample", "relu", "full", "default", "after_pool"),
        ("max", "scaled_tanh", "table", "lecun", "both"),
        ("avg", "sigmoid", "table", "truncated_normal", "before_pool"),
        ("max", "tanh", "full", "lecun", "after_pool"),
        ("avg", "none", "full", "default", "both"),
    ]
]
HEADS = [("rbf", "map"), ("rbf", "mle"), ("rbf", "cross_entropy"), ("softmax", "cross_entropy")]
OPTIMS = [("sgd", "constant"), ("adam", "cosine"), ("sgd", "step"), ("sdlm", "paper")]


@pytest.mark.parametrize(
    "factors,head_loss,optim",
    [(c, h, o) for (c, h), o in zip(itertools.product(COMBINATIONS, HEADS), itertools.cycle(OPTIMS))][::3],
)
def test_factor_combinations_run_a_training_step(factors, head_loss, optim):
    head, loss = head_loss
    overrides = [f"{k}={v}" for k, v in factors.items()]
    overrides += [f"model.head={head}", f"loss={loss}", f"optim={optim[0]}", f"optim.schedule={optim[1]}"]
    cfg = compose(*overrides, "data.train_subset=64", "data.test_subset=64", "data.batch_size=32")
    datamodule, module = prepare(cfg)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    changed = [not (b == a.detach()).all() for b, a in zip(before, module.parameters())]
    assert all(changed), f"a parameter was not updated: {overrides}"


@pytest.mark.slow
def test_same_seed_same_metrics_to_the_last_digit(store):
    import mlflow

    # Two passes, so the second pass's reshuffle is covered too; determinism needs no more images.
    overrides = small_overrides(store, subset=300, test_subset=300, passes=2)
    runs = [train(compose("experiment=paper", *overrides, f"seed={s}")) for s in (7, 7, 8)]
    client = mlflow.MlflowClient(store)
    history = [
        [(m.step, m.value) for key in ("train_loss", "test_error") for m in client.get_metric_history(r["run_id"], key)]
        for r in runs
    ]
    assert [step for step, _ in history[0]] == [1, 2, 1, 2]  # train_loss and test_error, both passes
    assert history[0] == history[1]
    assert history[0] != history[2]
