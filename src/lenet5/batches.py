"""Serving batches from tensors that already sit on the training device (no per-sample work)."""

from __future__ import annotations

from typing import Iterator

import torch


class TensorBatches:
    """Batches of (images, labels) sliced from tensors already on the device.

    With `shuffle`, each pass draws a new permutation from its own generator seeded by
    `seed` (pass k of seed s is the same order on every run and machine).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def size(self) -> int:
        """Items served per pass."""
        return len(self.labels)

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.size, generator=self.generator).to(self.images.device) if self.shuffle else None
        for start in range(0, self.size, self.batch_size):
            stop = start + self.batch_size
            yield self.batch(order[start:stop] if order is not None else slice(start, stop))
