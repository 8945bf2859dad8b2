"""Serving batches from tensors that already sit on the training device (no per-sample work)."""

from __future__ import annotations

from typing import Iterator

import torch


class TensorBatches:
    """Batches of (images, labels) sliced from tensors already on the device.

    With `shuffle`, each pass draws a new permutation from its own generator seeded by
    `seed` (pass k of seed s is the same order on every run and machine). `per_pass` > 0
    serves only the first `per_pass` items of each pass's permutation: a fresh sample,
    without replacement, of the whole set every pass (0 serves all of it).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0, per_pass: int = 0):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.per_pass = batch_size, shuffle, per_pass
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def size(self) -> int:
        """Items served per pass."""
        return len(self.labels)

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def served(self) -> int:
        """Items served per pass: `per_pass` of the `size`, or all of them."""
        return min(self.per_pass, self.size) if self.per_pass else self.size

    def __len__(self) -> int:
        return -(-self.served // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.size, generator=self.generator).to(self.images.device) if self.shuffle else None
        for start in range(0, self.served, self.batch_size):
            stop = min(start + self.batch_size, self.served)
            yield self.batch(order[start:stop] if order is not None else slice(start, stop))
