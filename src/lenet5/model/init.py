"""Weight initialisation schemes, applied after the network is built."""

from __future__ import annotations

import torch
from torch import nn

from .c3 import TableConv2d
from .pooling import Subsampling


def _fan_in_by_output(module: nn.Module) -> torch.Tensor | None:
    """Fan-in (inputs per unit, bias excluded) of each output map/unit, or None if not trainable."""
    if isinstance(module, nn.Conv2d):
        fan_in = module.weight[0].numel()
        return torch.full((module.out_channels,), float(fan_in))
    if isinstance(module, nn.Linear):
        return torch.full((module.out_features,), float(module.in_features))
    if isinstance(module, TableConv2d):
        return torch.tensor(module.fan_in_of_map, dtype=torch.float32)
    if isinstance(module, Subsampling):
        return torch.full((module.channels,), float(module.fan_in))
    return None


@torch.no_grad()
def initialize(model: nn.Module, scheme: str) -> None:
    """Re-draw every trainable weight and bias of `model` by `scheme`.

    - `lecun`: U(-2.4/F, 2.4/F), F the fan-in of the unit the weight feeds (paper).
    - `lecun_sqrt`: U(-1/sqrt(F), 1/sqrt(F)) with the same F (C3's per-map fan-in, S2/S4's 4),
      the square-root rule of LeCun and Bottou's Lush code, on every layer of the paper's network.
    - `default`: PyTorch's own (for conv/linear U(+-1/sqrt(F)) on biases, Kaiming-uniform with
      a=sqrt(5) on weights, which is also U(+-1/sqrt(F)): `lecun_sqrt` on those layers only).
    - `truncated_normal`: N(0, 1) truncated at +-2 for weights and biases (TF tutorial).
    """
    if scheme == "default":
        return  # every layer already ran its reset_parameters() when it was built
    for module in model.modules():
        fan_in = _fan_in_by_output(module)
        if fan_in is None:
            continue
        params = [module.weight if not isinstance(module, Subsampling) else module.coefficient, module.bias]
        if scheme == "truncated_normal":
            for p in params:
                if p is not None:
                    nn.init.trunc_normal_(p, mean=0.0, std=1.0, a=-2.0, b=2.0)
            continue
        # Paper, Appendix A: 2.4/F, deliberately without the square root that lecun_sqrt takes
        # (the paper assumes a unit's inputs are correlated).
        bound = 1 / fan_in.sqrt() if scheme == "lecun_sqrt" else 2.4 / fan_in
        weight, bias = params
        # Each stored kernel of the C3 table gets the bound of the map it feeds.
        weight_bound = bound[module.out_of_pair] if isinstance(module, TableConv2d) else bound
        weight.copy_((torch.rand_like(weight) * 2 - 1) * weight_bound.view(-1, *[1] * (weight.dim() - 1)))
        if bias is not None:
            bias.copy_((torch.rand_like(bias) * 2 - 1) * bound)
