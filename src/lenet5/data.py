"""MNIST and Fashion-MNIST: verified on disk, loaded once into tensors on the training device,
served by index.

Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017) has MNIST's format exactly: 60,000 + 10,000 28x28
grey images in ten classes, the same four IDX file names, under <root>/FashionMNIST/raw/
(torchvision's layout), so it goes through the same splits and preprocessing.

No per-sample PIL/ToTensor work happens while training: each split is one (N, 1, S, S)
float tensor and a batch is `images[index]`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch

from .batches import TensorBatches
from .config import Augment, ConfigError, DataConfig, Dataset, Preprocess
from .distortions import DistortedBatches

#: The canonical SHA-256 of the four uncompressed MNIST files (as published with MNIST).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
#: The same for Fashion-MNIST (/work/shared/data/FashionMNIST.SHA256SUMS; torchvision's copies).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
#: Per `data.dataset`: the folder under data.root (torchvision's class name), the files' SHA-256
#: and the torchvision class that reads (and downloads) them. Both have 60,000 + 10,000 images.
DATASETS = {
    Dataset.mnist: ("MNIST", MNIST_SHA256, "MNIST"),
    Dataset.fashion_mnist: ("FashionMNIST", FASHION_MNIST_SHA256, "FashionMNIST"),
}
assert set(DATASETS) == set(Dataset)
MNIST_TRAIN_SIZE, MNIST_TEST_SIZE = 60_000, 10_000

#: Paper, section II.B: background -0.1 and foreground 1.175, so the mean is about 0 and the
#: variance about 1; the 28x28 digit is centred in a 32x32 field.
PAPER_BACKGROUND, PAPER_FOREGROUND, PAPER_SIZE = -0.1, 1.175, 32


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torchvision_class(dataset: Dataset):
    import torchvision.datasets

    return getattr(torchvision.datasets, DATASETS[dataset][2])


def raw_folder(root: str | Path, dataset: Dataset = Dataset.mnist) -> Path:
    """The absolute folder holding the dataset's four files under data.root (torchvision's
    layout: <root>/MNIST/raw or <root>/FashionMNIST/raw)."""
    return Path(root).expanduser().resolve() / DATASETS[dataset][0] / "raw"


def ensure_mnist(root: str | Path, download: bool, dataset: Dataset = Dataset.mnist) -> Path:
    """Check (and fetch, when allowed and missing) `dataset` (MNIST by default, or
    fashion_mnist) under `root`/<its folder>/raw/.

    Returns the raw folder. Raises ConfigError with one line naming the file at fault
    and what to do, before any training starts.
    """
    folder, sha256, _ = DATASETS[dataset]
    raw = raw_folder(root, dataset)
    missing = [name for name in sha256 if not (raw / name).is_file()]
    if missing and download:
        source = _torchvision_class(dataset)
        try:
            source(str(raw.parent.parent), train=True, download=True)
            source(str(raw.parent.parent), train=False, download=True)
        except Exception as err:  # network, disk: say which and how to recover
            reason = " ".join(str(err).split())
            raise ConfigError(
                f"could not download {folder} into {raw} ({reason}); copy the four IDX files there, "
                f"or set data.root (or $MNIST_ROOT) to a folder holding {folder}/raw/"
            ) from None
        missing = [name for name in sha256 if not (raw / name).is_file()]
    if missing:
        raise ConfigError(
            f"{folder} file {raw / missing[0]} is missing; set data.root (or $MNIST_ROOT) to a folder "
            f"holding {folder}/raw/, or data.download=true to fetch it"
        )
    for name, expected in sha256.items():
        actual = _sha256(raw / name)
        if actual != expected:
            raise ConfigError(
                f"{folder} file {raw / name} is corrupt (SHA-256 {actual[:12]}..., expected {expected[:12]}...); "
                f"delete it and run again with data.download=true, or point data.root at a good copy"
            )
    return raw


def load_mnist_split(root: str | Path, train: bool, dataset: Dataset = Dataset.mnist) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of the training or test split of `dataset`."""
    source = _torchvision_class(dataset)(str(Path(root).expanduser().resolve()), train=train, download=False)
    return source.data, source.targets.long()


def preprocess(images: torch.Tensor, mode: Preprocess) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, S, S).

    `paper`: S = 32, zero-padded 2 pixels a side, pixel p mapped linearly so 0 -> -0.1 and
    255 -> 1.175. `unit`: S = 28, p / 255 (torchvision's ToTensor).
    """
    x = images.unsqueeze(1).float() / 255.0
    if mode == Preprocess.unit:
        return x
    pad = (PAPER_SIZE - images.shape[-1]) // 2
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=0.0)
    return PAPER_BACKGROUND + x * (PAPER_FOREGROUND - PAPER_BACKGROUND)


class MNISTDataModule(L.LightningDataModule):
    """Splits: `train` (the first `train_subset` of the images left after the validation
    hold-out), `val` (the last `val_size` training images, if any) and `test` (10,000, or the
first `test_subset`; none with `data.test=false`), of `data.dataset` (MNIST or Fashion-MNIST).

    `data_cfg` is the config's typed `data` section; `seed` orders the training passes.
    """

    def __init__(self, data_cfg: DataConfig, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = data_cfg, seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.checked = False

    @property
    def input_size(self) -> int:
        return PAPER_SIZE if self.cfg.preprocess == Preprocess.paper else 28

    def check(self) -> None:
        """Validate the split sizes and the files on disk (no tensors are loaded)."""
        val, subset = self.cfg.val_size, self.cfg.train_subset
        if val >= MNIST_TRAIN_SIZE or subset > MNIST_TRAIN_SIZE - val:
            raise ConfigError(
                f"data.train_subset={subset} with data.val_size={val} asks for more than the "
                f"{MNIST_TRAIN_SIZE} MNIST training images"
            )
        ensure_mnist(self.cfg.root, self.cfg.download, self.cfg.dataset)
        self.checked = True

    @property
    def raw_folder(self) -> Path:
        """Where this run's dataset files are (for the dataset inputs it logs)."""
        return raw_folder(self.cfg.root, self.cfg.dataset)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.checked:  # prepare() normally checked already: hashing 55 MB once is enough
            self.check()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        rows = self.split_rows()
        files = {side: load_mnist_split(self.cfg.root, side, self.cfg.dataset) for side in {r[0] for r in rows.values()}}
        for name, (from_train, start, stop) in rows.items():
            images, labels = files[from_train]
            self.splits[name] = (images[start:stop], labels[start:stop])
        self.splits = {
            name: (preprocess(x, self.cfg.preprocess).to(device), y.to(device)) for name, (x, y) in self.splits.items()
        }

    def split_rows(self) -> dict[str, tuple[bool, int, int]]:
        """{split: (from the training files?, first row, row after the last)} of each split used."""
        n_val = self.cfg.val_size
        pool = MNIST_TRAIN_SIZE - n_val
        rows = {"train": (True, 0, self.cfg.train_subset or pool)}
        if n_val:
            rows["val"] = (True, pool, MNIST_TRAIN_SIZE)
        if self.cfg.test:  # data.test=false (tuning): the test images are never even loaded
            rows["test"] = (False, 0, self.cfg.test_subset or MNIST_TEST_SIZE)
        return rows

    @property
    def eval_split_names(self) -> list[str]:
        """Names of the evaluation loaders, in `val_dataloader()` order."""
        return (["test"] if self.cfg.test else []) + (["val"] if self.cfg.val_size else [])

    @property
    def background(self) -> float:
        """Pixel value of a blank field after preprocessing."""
        return PAPER_BACKGROUND if self.cfg.preprocess == Preprocess.paper else 0.0

    def train_dataloader(self) -> TensorBatches | DistortedBatches:
        # Kept: a run's checkpoint holds its generator's state (LeNet5Module.training_state).
        self.train_batches = self.make_train_batches()
        return self.train_batches

    def make_train_batches(self, seed: int | None = None) -> TensorBatches | DistortedBatches:
        """The training batches, their order (and distortions) drawn from `seed` (default: the module's)."""
        seed = self.seed if seed is None else seed
        if self.cfg.augment == Augment.paper:
            return DistortedBatches(
                *self.splits["train"], self.cfg.batch_size, self.cfg.distorted_copies,
                self.cfg.distortion, self.background, seed=seed, per_pass=self.cfg.patterns_per_pass,
            )  # fmt: skip
        return TensorBatches(*self.splits["train"], self.cfg.batch_size, shuffle=True, seed=seed, per_pass=self.cfg.patterns_per_pass)

    def val_dataloader(self) -> list[TensorBatches]:
        return [self.eval_batches(name) for name in self.eval_split_names]

    def eval_batches(self, name: str) -> TensorBatches:
        return TensorBatches(*self.splits[name], self.cfg.eval_batch_size, shuffle=False)
