"""Squashing functions: the paper's scaled tanh and its modern replacements."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Activation

#: Paper, Appendix A: f(a) = A tanh(S a) with A = 1.7159 and S = 2/3, chosen so that
#: f(+-1) = +-1 and the second derivative of f peaks at +-1 (the RBF targets are +-1).
SCALED_TANH_AMPLITUDE = 1.7159
SCALED_TANH_SLOPE = 2.0 / 3.0


def scaled_tanh(a: torch.Tensor) -> torch.Tensor:
    """1.7159 * tanh(2a/3), elementwise; any shape."""
    return SCALED_TANH_AMPLITUDE * torch.tanh(SCALED_TANH_SLOPE * a)


class ScaledTanh(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return scaled_tanh(a)


#: f'(a) of each squashing function, written out: SDLM's curvature pass needs f'^2 on every
#: batch, and a closed form costs one elementwise kernel where autograd costs a backward pass.
_SLOPES = {
    ScaledTanh: lambda a: SCALED_TANH_AMPLITUDE * SCALED_TANH_SLOPE * (1 - torch.tanh(SCALED_TANH_SLOPE * a).square()),
    nn.Tanh: lambda a: 1 - torch.tanh(a).square(),
    nn.Sigmoid: lambda a: torch.sigmoid(a) * (1 - torch.sigmoid(a)),
    nn.ReLU: lambda a: (a > 0).to(a.dtype),
    nn.Identity: torch.ones_like,
}


def squashing_slope(squash: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """f'(a) elementwise for the squashing module `squash` (one of `make_activation`'s); any shape."""
    return _SLOPES[type(squash)](a)


def make_activation(kind: Activation) -> nn.Module:
    """The squashing function `kind` as a module (`none`: the identity)."""
    factories = {
        Activation.scaled_tanh: ScaledTanh,
        Activation.tanh: nn.Tanh,
        Activation.sigmoid: nn.Sigmoid,
        Activation.relu: nn.ReLU,
        Activation.none: nn.Identity,
    }
    return factories[kind]()
