"""Fashion-MNIST as a second dataset (`data.dataset=fashion_mnist`), on the real files under
$MNIST_ROOT/FashionMNIST/raw/, and `data.test=false` (a tuning run never sees the test set)."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from lenet5.config import ConfigError, Dataset, Preprocess, as_config
from lenet5.data import FASHION_MNIST_SHA256, MNISTDataModule, ensure_mnist, load_mnist_split, preprocess
from lenet5.presets import preset_factors
from lenet5.identity import config_hash, run_name
from lenet5.jobs import train

from .helpers import compose, run_cli, small_overrides

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fashion_root(mnist_root):
    if not (mnist_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"no Fashion-MNIST under {mnist_root}/FashionMNIST/raw/")
    return mnist_root


def test_real_files_verify_against_the_published_checksums(fashion_root):
    raw = ensure_mnist(fashion_root, download=False, dataset=Dataset.fashion_mnist)
    assert raw == fashion_root / "FashionMNIST" / "raw"
    # The table in data.py is the one shipped beside the files (FashionMNIST.SHA256SUMS).
    sums = fashion_root.parent / "FashionMNIST.SHA256SUMS"
    if sums.is_file():
        listed = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
        assert listed == FASHION_MNIST_SHA256
    assert hashlib.sha256((raw / "t10k-labels-idx1-ubyte").read_bytes()).hexdigest() == FASHION_MNIST_SHA256["t10k-labels-idx1-ubyte"]


def test_a_corrupt_fashion_file_is_named_in_one_line(fashion_root, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_MNIST_SHA256:
        shutil.copy(fashion_root / "FashionMNIST" / "raw" / name, raw / name)
    data = bytearray((raw / "train-labels-idx1-ubyte").read_bytes())
    data[200] ^= 0xFF
    (raw / "train-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"FashionMNIST file .*train-labels-idx1-ubyte is corrupt") as err:
        ensure_mnist(tmp_path, download=False, dataset=Dataset.fashion_mnist)
    assert "\n" not in str(err.value)
    (raw / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="is missing.*FashionMNIST/raw/.*data.download=true"):
        ensure_mnist(tmp_path, download=False, dataset=Dataset.fashion_mnist)


def test_fashion_images_get_the_same_padding_and_pixel_mapping(fashion_root):
    fashion, labels = load_mnist_split(fashion_root, train=False, dataset=Dataset.fashion_mnist)
    digits, _ = load_mnist_split(fashion_root, train=False)
    assert fashion.shape == digits.shape == (10_000, 28, 28) and set(labels.tolist()) == set(range(10))
    assert not torch.equal(fashion[:100], digits[:100])  # really the other files
    x = preprocess(fashion[:200], Preprocess.paper)
    assert x.shape == (200, 1, 32, 32)
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], -0.1 + fashion[:200].float() / 255 * 1.275)


def test_a_bad_dataset_is_refused_in_one_line(tmp_path):
    done = run_cli("data.dataset=kmnist", *small_overrides(f"sqlite:///{tmp_path / 'mlflow.db'}"), cwd=tmp_path)  # not made: refused first
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error:") and "kmnist" in line and "mnist" in line and "fashion_mnist" in line
    assert not (tmp_path / "mlflow.db").exists()


def test_dataset_is_a_factor_of_the_name_and_the_hash_and_mnist_hashes_did_not_move():
    mnist, fashion = compose(), compose("data.dataset=fashion_mnist")
    assert run_name(fashion, preset_factors("paper")) == "paper dataset=fashion_mnist seed=0"
    assert run_name(mnist, preset_factors("paper")) == "paper seed=0"
    assert config_hash(fashion) != config_hash(mnist)
    # data.dataset=mnist and data.test=true are left out of the hash: a config recorded before those
    # keys existed (the same config without them) keeps its hash.
    before_the_keys = OmegaConf.to_container(mnist, resolve=True)
    del before_the_keys["data"]["dataset"], before_the_keys["data"]["test"]
    assert config_hash(OmegaConf.create(before_the_keys)) == config_hash(mnist)
    assert config_hash(compose("data.test=false", "data.val_size=100")) != config_hash(compose("data.val_size=100"))


def test_a_fashion_run_logs_fashion_mnist_inputs(fashion_root, store):
    result = train(compose("data.dataset=fashion_mnist", "data.val_size=500", *small_overrides(store, subset=300, test_subset=300)))
    run = MlflowClient(store).get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ablation.dataset"] == "fashion_mnist"
    assert run.data.params["data.dataset"] == "fashion_mnist" and "dataset=fashion_mnist" in run.info.run_name
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"} and {d.name for d in inputs.values()} == {"fashion_mnist"}
    assert all(d.source.rstrip('"}').endswith("FashionMNIST/raw") for d in inputs.values())


def test_without_the_test_split_nothing_is_evaluated_on_test(store, capsys):
    """data.test=false: the test images are not loaded, so no test metric or input can exist;
    the run ends by printing the validation error it is judged by (not 'test error nan%')."""
    cfg = compose("data.test=false", "data.val_size=500", *small_overrides(store, subset=300))
    datamodule = MNISTDataModule(as_config(cfg).data)
    assert "test" not in datamodule.split_rows() and datamodule.eval_split_names == ["val"]
    result = train(cfg)
    run = MlflowClient(store).get_run(result["run_id"])
    assert "val_error" in run.data.metrics and not [m for m in run.data.metrics if m.startswith("test")]
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation"}
    assert result["test_error"] != result["test_error"]  # NaN
    assert f"validation error {run.data.metrics['val_error']:.2f}% after 1 epochs" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="data.test=False with data.val_size=0 evaluates nothing"):
        from lenet5.validate import check_config

        check_config(compose("data.test=false"))
