"""Per-layer trainable parameters and connections, computed from the built network.

A "connection" follows the paper and the articles: (inputs per unit + 1 if the unit has a
bias) x number of units, so the paper's network counts 340,908 with its fixed RBF layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

from .c3 import TableConv2d
from .lenet5 import LeNet5
from .pooling import Subsampling
from .rbf import RBFOutput

LAYERS = ("c1", "s2", "c3", "s4", "c5", "f6", "output")


@dataclass
class LayerCount:
    layer: str
    kind: str
    output_shape: str
    trainable_params: int
    connections: int


def _connections(module: nn.Module, out_shape: torch.Size) -> int:
    """Connections of one layer given its output shape (C, H, W) or (F,), batch excluded."""
    spatial = out_shape[1:].numel() if len(out_shape) == 3 else 1
    if isinstance(module, TableConv2d):
        k2 = module.kernel_size**2
        return sum((len(inputs) * k2 + 1) * spatial for inputs in module.table)
    if isinstance(module, nn.Conv2d):
        bias = module.bias is not None
        return (module.weight[0].numel() + bias) * out_shape.numel()
    if isinstance(module, Subsampling):
        return (module.fan_in + 1) * out_shape.numel()
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return 4 * out_shape.numel()
    if isinstance(module, nn.Linear):
        return (module.in_features + (module.bias is not None)) * module.out_features
    if isinstance(module, RBFOutput):
        return module.prototypes.numel()
    raise TypeError(f"no connection rule for {type(module).__name__}")


def layer_counts(model: LeNet5) -> list[LayerCount]:
    """One row per layer, from a forward pass of one blank image through `model`."""
    shapes: dict[str, torch.Size] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda mod, inp, out, name=name: shapes.__setitem__(name, out.shape[1:])
        )
        for name in LAYERS
    ]
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, 1, model.input_size, model.input_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    rows = []
    for name in LAYERS:
        module = getattr(model, name)
        rows.append(
            LayerCount(
                layer=name.upper(),
                kind=type(module).__name__,
                output_shape="x".join(map(str, shapes[name])),
                trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
                connections=_connections(module, shapes[name]),
            )
        )
    return rows


def counts_table(model: LeNet5) -> pd.DataFrame:
    """`layer_counts` as a DataFrame with a `total` row."""
    table = pd.DataFrame([asdict(row) for row in layer_counts(model)])
    total = {"layer": "total", "kind": "", "output_shape": "",
             "trainable_params": table.trainable_params.sum(), "connections": table.connections.sum()}  # fmt: skip
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)
