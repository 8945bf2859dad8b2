"""S2/S4: the paper's trainable subsampling, or max/average pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Pool

#: Each subsampling unit sees a 2x2 block of its input map.
WINDOW = 2


class Subsampling(nn.Module):
    """Paper's S-layer: sum of each non-overlapping 2x2 block x a trainable coefficient
    + a trainable bias, one pair per map (2 parameters a map; the squashing function is
    applied by the network, as for every other layer).

    Input (N, C, H, W) -> output (N, C, H/2, W/2).
    """

    fan_in = WINDOW * WINDOW

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.coefficient = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same rule as PyTorch's conv/linear default: U(-1/sqrt(F), 1/sqrt(F)).
        bound = self.fan_in**-0.5
        nn.init.uniform_(self.coefficient, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block_sum = F.avg_pool2d(x, WINDOW) * self.fan_in
        return block_sum * self.coefficient.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, window={WINDOW}x{WINDOW}"


def make_pool(kind: Pool, channels: int) -> nn.Module:
    """`subsample` (paper), `max` or `avg`; all halve each spatial side.

    `ceil_mode` keeps odd sides from losing their last row (TF's SAME pooling).
    """
    if kind == Pool.subsample:
        return Subsampling(channels)
    if kind == Pool.max:
        return nn.MaxPool2d(WINDOW, ceil_mode=True)
    return nn.AvgPool2d(WINDOW, ceil_mode=True)
