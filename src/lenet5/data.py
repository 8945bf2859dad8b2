"""MNIST: verified on disk, loaded once into tensors on the training device, served by index.

No per-sample PIL/ToTensor work happens while training: each split is one (N, 1, S, S)
float tensor and a batch is `images[index]`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch

from .batches import TensorBatches
from .config import ConfigError, select
from .distortions import DistortedBatches

#: The canonical SHA-256 of the four uncompressed MNIST files (as published with MNIST).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
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


def raw_folder(root: str | Path) -> Path:
    """The absolute folder holding the four MNIST files under data.root (torchvision's layout)."""
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def ensure_mnist(root: str | Path, download: bool) -> Path:
    """Check (and fetch, when allowed and missing) MNIST under `root`/MNIST/raw/.

    Returns the raw folder. Raises ConfigError with one line naming the file at fault
    and what to do, before any training starts.
    """
    raw = raw_folder(root)
    missing = [name for name in MNIST_SHA256 if not (raw / name).is_file()]
    if missing and download:
        from torchvision.datasets import MNIST

        try:
            MNIST(str(raw.parent.parent), train=True, download=True)
            MNIST(str(raw.parent.parent), train=False, download=True)
        except Exception as err:  # network, disk: say which and how to recover
            reason = " ".join(str(err).split())
            raise ConfigError(
                f"could not download MNIST into {raw} ({reason}); copy the four IDX files there, "
                f"or set data.root (or $MNIST_ROOT) to a folder holding MNIST/raw/"
            ) from None
        missing = [name for name in MNIST_SHA256 if not (raw / name).is_file()]
    if missing:
        raise ConfigError(
            f"MNIST file {raw / missing[0]} is missing; set data.root (or $MNIST_ROOT) to a folder "
            f"holding MNIST/raw/, or data.download=true to fetch it"
        )
    for name, expected in MNIST_SHA256.items():
        actual = _sha256(raw / name)
        if actual != expected:
            raise ConfigError(
                f"MNIST file {raw / name} is corrupt (SHA-256 {actual[:12]}..., expected {expected[:12]}...); "
                f"delete it and run again with data.download=true, or point data.root at a good copy"
            )
    return raw


def load_mnist_split(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of the training or test split."""
    from torchvision.datasets import MNIST

    dataset = MNIST(str(Path(root).expanduser().resolve()), train=train, download=False)
    return dataset.data, dataset.targets.long()


def preprocess(images: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, S, S).

    `paper`: S = 32, zero-padded 2 pixels a side, pixel p mapped linearly so 0 -> -0.1 and
    255 -> 1.175. `unit`: S = 28, p / 255 (torchvision's ToTensor).
    """
    x = images.unsqueeze(1).float() / 255.0
    if mode == "unit":
        return x
    pad = (PAPER_SIZE - images.shape[-1]) // 2
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=0.0)
    return PAPER_BACKGROUND + x * (PAPER_FOREGROUND - PAPER_BACKGROUND)


class MNISTDataModule(L.LightningDataModule):
    """Splits: `train` (the first `train_subset` of the images left after the validation
    hold-out), `val` (the last `val_size` training images, if any) and `test` (10,000).

    `data_cfg` is the `data` node of the config; `seed` orders the training passes.
    """

    def __init__(self, data_cfg, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = data_cfg, seed
        self.mode = select(data_cfg, "preprocess")
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.checked = False
        self.order_state: torch.Tensor | None = None

    @property
    def input_size(self) -> int:
        return PAPER_SIZE if self.mode == "paper" else 28

    def check(self) -> None:
        """Validate the split sizes and the files on disk (no tensors are loaded)."""
        val, subset = self.cfg.val_size, self.cfg.train_subset
        if val >= MNIST_TRAIN_SIZE or subset > MNIST_TRAIN_SIZE - val:
            raise ConfigError(
                f"data.train_subset={subset} with data.val_size={val} asks for more than the "
                f"{MNIST_TRAIN_SIZE} MNIST training images"
            )
        ensure_mnist(self.cfg.root, self.cfg.download)
        self.checked = True

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.checked:  # prepare() normally checked already: hashing 55 MB once is enough
            self.check()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        files = {True: load_mnist_split(self.cfg.root, train=True), False: load_mnist_split(self.cfg.root, train=False)}
        for name, (from_train, start, stop) in self.split_rows().items():
            images, labels = files[from_train]
            self.splits[name] = (images[start:stop], labels[start:stop])
        self.splits = {
            name: (preprocess(x, self.mode).to(device), y.to(device)) for name, (x, y) in self.splits.items()
        }

    def split_rows(self) -> dict[str, tuple[bool, int, int]]:
        """{split: (from the training files?, first row, row after the last)} of each split used."""
        n_val = self.cfg.val_size
        pool = MNIST_TRAIN_SIZE - n_val
        rows = {"train": (True, 0, self.cfg.train_subset or pool)}
        if n_val:
            rows["val"] = (True, pool, MNIST_TRAIN_SIZE)
        rows["test"] = (False, 0, self.cfg.test_subset or MNIST_TEST_SIZE)
        return rows

    @property
    def eval_split_names(self) -> list[str]:
        """Names of the evaluation loaders, in `val_dataloader()` order."""
        return ["test"] + (["val"] if self.cfg.val_size else [])

    @property
    def background(self) -> float:
        """Pixel value of a blank field after preprocessing."""
        return PAPER_BACKGROUND if self.mode == "paper" else 0.0

    def train_dataloader(self) -> TensorBatches | DistortedBatches:
        self.train_batches = self._make_train_batches()
        if self.order_state is not None:
            self.train_batches.generator.set_state(self.order_state)
            self.order_state = None
        return self.train_batches

    def state_dict(self) -> dict:
        """The training order's generator (saved in checkpoints: a resumed run draws the
        same order for its next pass as an uninterrupted one)."""
        batches = getattr(self, "train_batches", None)
        return {"order_generator": batches.generator.get_state()} if batches is not None else {}

    def load_state_dict(self, state: dict) -> None:
        # Lightning restores this before it asks for the training batches.
        self.order_state = state.get("order_generator")

    def _make_train_batches(self) -> TensorBatches | DistortedBatches:
        if select(self.cfg, "augment") == "paper":
            return DistortedBatches(
                *self.splits["train"], self.cfg.batch_size, self.cfg.distorted_copies,
                self.cfg.distortion, self.background, seed=self.seed, per_pass=self.cfg.patterns_per_pass,
            )  # fmt: skip
        return TensorBatches(*self.splits["train"], self.cfg.batch_size, shuffle=True, seed=self.seed, per_pass=self.cfg.patterns_per_pass)

    def val_dataloader(self) -> list[TensorBatches]:
        return [self.eval_batches(name) for name in self.eval_split_names]

    def eval_batches(self, name: str) -> TensorBatches:
        return TensorBatches(*self.splits[name], self.cfg.eval_batch_size, shuffle=False)
