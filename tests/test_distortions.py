"""The paper's affine distortions: geometry of each component, the fixed distorted set, the artifact."""

from __future__ import annotations

import pytest

import mlflow
import torch

from lenet5.config import Preprocess
from lenet5.data import load_mnist_split, preprocess
from lenet5.distortions import DistortedBatches, distort
from lenet5.jobs import train

from .helpers import compose, small_overrides

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

IDENTITY = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])


def centre_of_mass(image: torch.Tensor, background: float) -> torch.Tensor:
    """(x, y) in pixels of the ink of a (1, S, S) image."""
    ink = (image[0] - background).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(ink.shape[0]), torch.arange(ink.shape[1]), indexing="ij")
    return torch.stack([(ink * xs).sum(), (ink * ys).sum()]) / ink.sum()


def digits(mnist_root, n=8):
    images, labels = load_mnist_split(mnist_root, train=True)
    return preprocess(images[:n], Preprocess.paper), labels[:n]


def test_identity_leaves_images_alone(mnist_root):
    x, _ = digits(mnist_root)
    torch.testing.assert_close(distort(x, IDENTITY.repeat(len(x), 1), -0.1), x, atol=1e-5, rtol=0)


def test_translation_moves_the_ink_by_that_many_pixels(mnist_root):
    x, _ = digits(mnist_root)
    shift = torch.tensor([[2.0, -1.0, 1.0, 1.0, 0.0]]).repeat(len(x), 1)
    moved = distort(x, shift, -0.1)
    for before, after in zip(x, moved):
        torch.testing.assert_close(centre_of_mass(after, -0.1) - centre_of_mass(before, -0.1), torch.tensor([2.0, -1.0]), atol=0.15, rtol=0)


def test_squeezing_trades_width_for_height(mnist_root):
    x, _ = digits(mnist_root)
    squeezed = distort(x, torch.tensor([[0.0, 0.0, 1.0, 0.8, 0.0]]).repeat(len(x), 1), -0.1)

    def spread(image):
        ink = (image[0] + 0.1).clamp(min=0)
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        cx, cy = (ink * xs).sum() / ink.sum(), (ink * ys).sum() / ink.sum()
        return ((ink * (xs - cx) ** 2).sum() / ink.sum()).sqrt(), ((ink * (ys - cy) ** 2).sum() / ink.sum()).sqrt()

    for before, after in zip(x, squeezed):
        (w0, h0), (w1, h1) = spread(before), spread(after)
        assert abs(w1 / w0 - 0.8) < 0.08 and abs(h1 / h0 - 1.25) < 0.1
    # The background stays the paper's -0.1 where no ink was moved in.
    assert torch.allclose(squeezed[:, :, 0, :], torch.tensor(-0.1), atol=1e-5)


def test_distorted_set_is_originals_plus_fixed_copies(mnist_root):
    x, y = digits(mnist_root, 50)
    cfg = compose("data.augment=paper")
    batches = DistortedBatches(x, y, 20, 3, cfg.data.distortion, -0.1, seed=0)
    assert len(batches) == -(-50 * 4 // 20)
    first, second = [torch.cat([b for b, _ in batches]) for _ in range(2)]
    labels = torch.cat([l for _, l in batches])
    assert len(first) == 200 and sorted(labels.tolist()) == sorted(y.tolist() * 4)
    # Each pass shows the same 200 images (a fixed distorted set) in a new order.
    key = lambda t: sorted(t.flatten(1).sum(1).round(decimals=3).tolist())  # noqa: E731
    assert key(first) == key(second) and not torch.equal(first, second)
    originals = {round(v, 3) for v in x.flatten(1).sum(1).tolist()}
    assert sum(round(v, 3) in originals for v in first.flatten(1).sum(1).tolist()) >= 50


def test_a_pass_can_be_a_fresh_sample_of_the_distorted_set(mnist_root):
    """data.patterns_per_pass=N: each pass serves N patterns drawn anew, without repeats,
    from originals and distortions together."""
    x, y = digits(mnist_root, 50)
    cfg = compose("data.augment=paper")
    batches = DistortedBatches(x, y, 16, 3, cfg.data.distortion, -0.1, seed=0, per_pass=60)
    assert len(batches) == 4  # 60 patterns in batches of 16
    passes = [torch.cat([b for b, _ in batches]) for _ in range(3)]
    sums = [p.flatten(1).sum(1).round(decimals=3).tolist() for p in passes]
    assert all(len(s) == 60 and len(set(s)) == 60 for s in sums)
    assert len({tuple(sorted(s)) for s in sums}) == 3  # a different sample each pass
    originals = {round(v, 3) for v in x.flatten(1).sum(1).tolist()}
    assert any(v not in originals for s in sums for v in s)  # distortions are drawn too


def test_paper_distortions_preset_trains_and_logs_the_grid(store):
    result = train(compose("experiment=paper_distortions", "data.distorted_copies=2", *small_overrides(store, subset=500)))
    client = mlflow.MlflowClient(store)
    run = client.get_run(result["run_id"])
    assert run.data.tags["ablation.augment"] == "paper"
    assert "distortions.png" in {a.path for a in client.list_artifacts(result["run_id"])}
    assert run.data.metrics["train_images_per_s"] > 0
