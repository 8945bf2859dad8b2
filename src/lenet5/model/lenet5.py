"""LeNet-5, read top to bottom: C1 -> S2 -> C3 -> S4 -> C5 -> F6 -> OUTPUT.

One builder for every variant: the paper's network, its modern counterpart and the two
tutorial systems of the reference are all configurations of this class.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import C3, ActivationAt, ConfigError, Head, ModelConfig
from .activations import make_activation
from .c3 import C3_CONNECTION_TABLE, TableConv2d
from .init import initialize
from .pooling import make_pool
from .rbf import RBFOutput

C1_MAPS, C3_MAPS, C5_UNITS, CLASSES = 6, 16, 120, 10
C3_C5_KERNEL = 5


class LeNet5(nn.Module):
    """Input (N, 1, S, S) images (S = 32 for the paper, 28 for the tutorials) ->
    (N, 10) RBF distances (smaller = more likely) or logits (larger = more likely).

    `config` is the config's `model` section as a typed object (`lenet5.config.as_config`).
    """

    def __init__(self, config: ModelConfig, input_size: int = 32):
        super().__init__()
        self.activation_at = config.activation_at
        self.head_kind = config.head
        self.input_size = input_size
        self.f = make_activation(config.activation)

        self.c1 = nn.Conv2d(1, C1_MAPS, config.c1_kernel, padding=config.c1_padding)
        self.s2 = make_pool(config.pool, C1_MAPS)
        if config.c3 == C3.table:
            self.c3 = TableConv2d(C1_MAPS, C3_CONNECTION_TABLE, C3_C5_KERNEL, padding=config.c3_padding)
        else:
            self.c3 = nn.Conv2d(C1_MAPS, C3_MAPS, C3_C5_KERNEL, padding=config.c3_padding)
        self.s4 = make_pool(config.pool, C3_MAPS)
        # C5 is a convolution: over the paper's 5x5 S4 maps it is fully connected (1x1 output),
        # over a larger map (the TF tutorial's 7x7 with SAME padding) it is not.
        self.c5 = nn.Conv2d(C3_MAPS, C5_UNITS, C3_C5_KERNEL, padding=config.c5_padding)
        self.f6 = nn.Linear(C5_UNITS * self._c5_area(config), config.f6_width)
        if self.head_kind == Head.rbf:
            if config.f6_width != 84:
                raise ConfigError(f"model.head=rbf needs model.f6_width=84 (7x12 bitmaps), got {config.f6_width}")
            self.output = RBFOutput()
        else:
            self.output = nn.Linear(config.f6_width, CLASSES)
        initialize(self, config.init, config.init_gain)

    def _c5_area(self, config: ModelConfig) -> int:
        """Spatial area of C5's output, found by running C1-C5 on a blank image."""
        x = torch.zeros(1, 1, self.input_size, self.input_size)
        try:
            with torch.no_grad():
                for layer, squash in self.convolutional_stages():
                    x = self.f(layer(x)) if squash else layer(x)
        except RuntimeError as err:
            raise ConfigError(
                f"model geometry does not fit a {self.input_size}x{self.input_size} input "
                f"(model.c1_kernel={config.c1_kernel}, c1_padding={config.c1_padding}, "
                f"c3_padding={config.c3_padding}, c5_padding={config.c5_padding}): "
                f"{str(err).splitlines()[0]}; use data.preprocess=paper (32x32) or more padding"
            ) from None
        return x.shape[-1] * x.shape[-2]

    def convolutional_stages(self) -> list[tuple[nn.Module, bool]]:
        """C1 to C5 as (layer, whether the squashing function follows it).

        The paper squashes every convolution's and every subsampling's output
        (`activation_at=both`); `before_pool`/`after_pool` keep only one of the two.
        """
        after_conv = self.activation_at in (ActivationAt.both, ActivationAt.before_pool)
        after_pool = self.activation_at in (ActivationAt.both, ActivationAt.after_pool)
        return [
            (self.c1, after_conv),  # (N, 6, 28, 28) for the paper
            (self.s2, after_pool),  # (N, 6, 14, 14)
            (self.c3, after_conv),  # (N, 16, 10, 10)
            (self.s4, after_pool),  # (N, 16, 5, 5)
            (self.c5, True),  # (N, 120, 1, 1)
        ]

    def stages(self) -> list[tuple[nn.Module, bool]]:
        """Every layer in forward order; one list serves the forward and the SDLM curvature pass."""
        return self.convolutional_stages() + [
            (self.f6, True),  # (N, 84), on C5's output flattened
            (self.output, False),  # (N, 10)
        ]

    def _walk(self, x: torch.Tensor):
        """Yield (layer, its output after the squashing function where one follows), in order."""
        for layer, squash in self.stages():
            if layer is self.f6:
                x = x.flatten(1)
            x = layer(x)
            if squash:
                x = self.f(x)
            yield layer, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, x in self._walk(x):
            pass
        return x

    def stage_outputs(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """[(name, output)] of every stage of `stages()`, after its squashing function where one
        follows: ("C1", (N, 6, 28, 28)), ("S2", (N, 6, 14, 14)), ("C3", (N, 16, 10, 10)),
        ("S4", (N, 16, 5, 5)), ("C5", (N, 120, 1, 1)), ("F6", (N, 84)), ("OUTPUT", (N, 10)) for
        the paper; the last equals `forward(x)`. Names are the attribute names, upper-cased.
        """
        names = {module: name.upper() for name, module in self.named_children()}
        return [(names[layer], out) for layer, out in self._walk(x)]

    def scores(self, out: torch.Tensor) -> torch.Tensor:
        """Head output -> class scores, larger = more likely (negated distances for RBF)."""
        return -out if self.head_kind == Head.rbf else out

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Head output (N, 10) -> predicted class (N,): argmin distance (RBF) or argmax logit."""
        return self.scores(out).argmax(1)
