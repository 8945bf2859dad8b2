"""C3: the 5x5 convolution whose maps each see only some S2 maps (paper Table I)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Paper Table I: the S2 maps (0-5) that feed each of the 16 C3 maps. The first six see
#: three contiguous maps, the next six four contiguous, three see four non-contiguous,
#: the last sees all six; the paper breaks the symmetry so maps learn different features.
C3_CONNECTION_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


class TableConv2d(nn.Module):
    """Convolution that stores a kernel only for the (output map, input map) pairs in
    `table`: 60 kernels for Table I, so its parameters are exactly the paper's 1,516 and
    no weight outside the table exists to be used, counted or updated.

    Input (N, in_channels, H, W) -> output (N, len(table), H - k + 1 + 2p, same).
    """

    def __init__(self, in_channels: int, table: tuple[tuple[int, ...], ...], kernel_size: int, padding: int = 0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, len(table)
        self.kernel_size, self.padding = kernel_size, padding
        self.table = table
        out_of_pair = [o for o, inputs in enumerate(table) for _ in inputs]
        in_of_pair = [i for inputs in table for i in inputs]
        # Row of each stored kernel in the flattened dense (out * in) kernel stack.
        self.register_buffer(
            "dense_row", torch.tensor([o * in_channels + i for o, i in zip(out_of_pair, in_of_pair)]), persistent=False
        )
        #: Output map of each stored kernel, and the fan-in (inputs x k x k) of each output map.
        self.register_buffer("out_of_pair", torch.tensor(out_of_pair), persistent=False)
        self.fan_in_of_map = [len(inputs) * kernel_size * kernel_size for inputs in table]
        self.weight = nn.Parameter(torch.empty(len(in_of_pair), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's default rule for convolutions, U(-1/sqrt(F), 1/sqrt(F)), with each map's own F.
        bounds = torch.tensor(self.fan_in_of_map, dtype=torch.float32).rsqrt()
        with torch.no_grad():
            self.weight.copy_((torch.rand_like(self.weight) * 2 - 1) * bounds[self.out_of_pair].view(-1, 1, 1))
            self.bias.copy_((torch.rand_like(self.bias) * 2 - 1) * bounds)

    def dense_weight(self) -> torch.Tensor:
        """(out, in, k, k) kernel with zeros outside the table; gradients flow to the stored kernels only."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)
        dense = dense.index_copy(0, self.dense_row, self.weight)
        return dense.view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, pairs={self.weight.shape[0]}"
