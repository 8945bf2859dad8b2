"""Weight initialisation schemes, applied after the network is built."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Init
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


#: Each rule's own numerator v of its bound v/F or v/sqrt(F), used when `model.init_gain` is unset.
DEFAULT_GAIN = {Init.lecun: 2.4, Init.lecun_sqrt: 1.0, Init.lush: 1.0}


@torch.no_grad()
def initialize(model: nn.Module, scheme: Init, gain: float | None = None) -> None:
    """Re-draw every trainable weight and bias of `model` by `scheme`.

    F is the fan-in of the unit a weight feeds (C3's per-map fan-in, 4 for S2/S4), v = `gain`
    (default: the rule's own, `DEFAULT_GAIN`).
    - `lecun`: U(-v/F, v/F), v = 2.4 (paper, Appendix A).
    - `lecun_sqrt`: U(-v/sqrt(F), v/sqrt(F)), v = 1, biases too.
    - `lush`: LeCun and Bottou's Lush code (`forget v 2` in demos/lenet5.lsh): weights
      U(-v/sqrt(F), v/sqrt(F)), each S2/S4 coefficient fixed at v/sqrt(4) (0.5 for v = 1),
      every bias 0.
    - `default`: PyTorch's own (for conv/linear U(+-1/sqrt(F)) on biases, Kaiming-uniform with
      a=sqrt(5) on weights, which is also U(+-1/sqrt(F)): `lecun_sqrt` on those layers only).
    - `truncated_normal`: N(0, 1) truncated at +-2 for weights and biases (TF tutorial).
    """
    if scheme == Init.default:
        return  # every layer already ran its reset_parameters() when it was built
    v = DEFAULT_GAIN.get(scheme, 1.0) if gain is None else gain
    for module in model.modules():
        fan_in = _fan_in_by_output(module)
        if fan_in is None:
            continue
        weight = module.weight if not isinstance(module, Subsampling) else module.coefficient
        bias = module.bias
        if scheme == Init.truncated_normal:
            for p in (weight, bias):
                if p is not None:
                    nn.init.trunc_normal_(p, mean=0.0, std=1.0, a=-2.0, b=2.0)
            continue
        # Paper, Appendix A: v/F, deliberately without the square root of the other rules
        # (the paper assumes a unit's inputs are correlated).
        bound = v / fan_in if scheme == Init.lecun else v / fan_in.sqrt()
        if scheme == Init.lush and isinstance(module, Subsampling):
            weight.copy_(bound)  # Lush starts every S-layer coefficient at v/sqrt(4), not at random
        else:
            # Each stored kernel of the C3 table gets the bound of the map it feeds.
            weight_bound = bound[module.out_of_pair] if isinstance(module, TableConv2d) else bound
            weight.copy_((torch.rand_like(weight) * 2 - 1) * weight_bound.view(-1, *[1] * (weight.dim() - 1)))
        if bias is not None and scheme == Init.lush:
            bias.zero_()
        elif bias is not None:
            bias.copy_((torch.rand_like(bias) * 2 - 1) * bound)
