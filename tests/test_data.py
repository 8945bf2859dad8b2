"""MNIST loading: integrity checks, preprocessing, splits and batching, on the real files."""

from __future__ import annotations

import shutil

import pytest
import torch

from lenet5.config import ConfigError, Preprocess, as_config
from lenet5.batches import TensorBatches
from lenet5.data import MNIST_SHA256, MNISTDataModule, ensure_mnist, load_mnist_split, preprocess

from .helpers import compose


def copy_mnist(src, dst):
    (dst / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_SHA256:
        shutil.copy(src / "MNIST" / "raw" / name, dst / "MNIST" / "raw" / name)
    return dst / "MNIST" / "raw"


def test_real_files_verify(mnist_root):
    assert ensure_mnist(mnist_root, download=False).is_dir()


def test_corrupt_file_is_named(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path)
    victim = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte is corrupt") as err:
        ensure_mnist(tmp_path, download=False)
    assert "\n" not in str(err.value)


def test_missing_file_is_named_without_downloading(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path)
    (raw / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte is missing.*data.root"):
        ensure_mnist(tmp_path, download=False)


def test_paper_preprocessing(mnist_root):
    images, _ = load_mnist_split(mnist_root, train=False)
    x = preprocess(images[:500], Preprocess.paper)
    assert x.shape == (500, 1, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, :, :2], torch.tensor(-0.1)) and torch.allclose(x[:, :, :, -2:], torch.tensor(-0.1))
    assert x.min().item() == pytest.approx(-0.1) and x.max().item() == pytest.approx(1.175)
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], -0.1 + images[:500].float() / 255 * 1.275)
    # The paper's "mean roughly 0" holds; its "variance roughly 1" does not for MNIST's mostly
    # blank fields (about 0.11), so only the mean is checked.
    assert abs(x.mean().item()) < 0.05


def test_unit_preprocessing(mnist_root):
    images, _ = load_mnist_split(mnist_root, train=False)
    x = preprocess(images[:10], Preprocess.unit)
    assert x.shape == (10, 1, 28, 28) and x.min() == 0 and x.max() == 1


def test_splits_subset_and_validation_hold_out(mnist_root):
    cfg = compose("data.train_subset=1000", "data.val_size=500", "data.test_subset=300")
    datamodule = MNISTDataModule(as_config(cfg).data, seed=0)
    datamodule.setup()
    train_x, train_y = datamodule.splits["train"]
    val_x, _ = datamodule.splits["val"]
    all_images, all_labels = load_mnist_split(mnist_root, train=True)
    assert len(train_y) == 1000 and len(val_x) == 500 and len(datamodule.splits["test"][1]) == 300
    torch.testing.assert_close(train_x, preprocess(all_images[:1000], Preprocess.paper))  # the first N
    torch.testing.assert_close(val_x, preprocess(all_images[-500:], Preprocess.paper))  # the last N
    assert datamodule.eval_split_names == ["test", "val"]


def test_oversized_split_is_rejected():
    cfg = compose("data.train_subset=59000", "data.val_size=2000")
    with pytest.raises(ConfigError, match="more than the 60000"):
        MNISTDataModule(as_config(cfg).data).check()


def test_batches_cover_every_image_once_in_a_seeded_order():
    images, labels = torch.arange(103).float().view(-1, 1, 1, 1), torch.arange(103)
    orders = []
    for seed in (0, 0, 1):
        batches = TensorBatches(images, labels, 10, shuffle=True, seed=seed)
        assert len(batches) == 11
        first_pass = torch.cat([y for _, y in batches])
        second_pass = torch.cat([y for _, y in batches])
        assert sorted(first_pass.tolist()) == list(range(103))
        assert not torch.equal(first_pass, second_pass)  # a new order each pass
        orders.append(first_pass)
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
