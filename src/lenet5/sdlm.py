"""Stochastic diagonal Levenberg-Marquardt (paper, Appendix C).

Each parameter w_k moves by -eta / (mu + h_kk) * dE/dw_k, where h_kk is an estimate of
the diagonal of the Gauss-Newton Hessian, re-estimated on a few hundred training
patterns before each pass. h_kk is computed the paper's way: second derivatives are
back-propagated layer by layer, dropping every off-diagonal term:

    d2E/da_i^2  = f'(a_i)^2 * d2E/dx_i^2                  (through a squashing function)
    d2E/dx_j^2  = sum_i w_ij^2 * d2E/da_i^2               (through a weighted sum)
    d2E/dw_ij^2 = sum over the connections sharing w_ij of d2E/da_i^2 * x_j^2

For a layer that is linear in its input and in its weights, the last two lines are the
ordinary backward pass of the same layer run with squared weights on squared inputs, so
every layer (convolution, C3 table, subsampling, linear) gets its rule from autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .model.lenet5 import LeNet5

#: Paper, Appendix C: eta per pass (1-based) and the damping constant mu.
PAPER_ETA = ((2, 5e-4), (5, 2e-4), (8, 1e-4), (12, 5e-5))
PAPER_ETA_AFTER = 1e-5
PAPER_MU = 0.02
#: Paper, section III: the effective steps eta/(mu + h_kk) of the first pass ranged from about
#: 7e-5 to 0.016 over the parameters.
PAPER_PASS1_STEPS = (7e-5, 0.016)


def paper_eta(pass_number: int) -> float:
    """The paper's global step for pass `pass_number` (1-based): 5e-4 x2, 2e-4 x3, 1e-4 x3, 5e-5 x4, then 1e-5."""
    for last_pass, eta in PAPER_ETA:
        if pass_number <= last_pass:
            return eta
    return PAPER_ETA_AFTER


def _squashing_slope_squared(model: LeNet5, pre_activation: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        a = pre_activation.detach().requires_grad_(True)
        (slope,) = torch.autograd.grad(model.f(a).sum(), a)
    return slope.square()


def _backprop_curvature(layer: nn.Module, layer_input: torch.Tensor, curvature: torch.Tensor):
    """(d2E/dx^2 for the layer's input, {param name: d2E/dw^2 summed over the batch})."""
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        with torch.enable_grad():
            x = layer_input.detach().requires_grad_(True)
            (through,) = torch.autograd.grad(layer(x), x, grad_outputs=curvature)
        # Max-pooling routes each output to one input with weight 1 (squared: 1). Average
        # pooling's weights are 1/k^2, whose squares are 1/k^4: the backward pass gives 1/k^2.
        if isinstance(layer, nn.AvgPool2d):
            through = through / (layer.kernel_size**2 if isinstance(layer.kernel_size, int) else 4)
        return through, {}
    with torch.enable_grad():
        squared = {name: p.detach().square().requires_grad_(True) for name, p in layer.named_parameters()}
        x_squared = layer_input.detach().square().requires_grad_(True)
        out = functional_call(layer, squared, (x_squared,))
        grads = torch.autograd.grad(out, [x_squared, *squared.values()], grad_outputs=curvature)
    return grads[0], dict(zip(squared, grads[1:]))


@torch.no_grad()
def gauss_newton_diagonal(model: LeNet5, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """h_kk per trainable parameter (name -> tensor shaped like it), averaged over `images` (N, 1, S, S).

    The output curvature is the Gauss-Newton one of the paper's criterion: for the RBF head,
    y_D = sum_j (x_j - w_Dj)^2 gives d2E/dx_j^2 = 2 on every F6 state (it does not depend on
    the label); for a softmax head, cross-entropy gives p_i (1 - p_i) on the logits.
    """
    records = []
    x = images
    for layer, squash in model.stages():
        if layer is model.f6:
            x = x.flatten(1)
        pre = layer(x)
        records.append((layer, x, pre, squash))
        x = model.f(pre) if squash else pre

    if model.head_kind == "rbf":
        curvature = torch.full_like(records[-1][1], 2.0)
        records = records[:-1]  # the RBF layer has nothing to train
    else:
        probabilities = F.softmax(records[-1][2], dim=1)
        curvature = probabilities * (1 - probabilities)

    names = {module: prefix for prefix, module in model.named_modules()}
    diagonal: dict[str, torch.Tensor] = {}
    for index in reversed(range(len(records))):
        layer, layer_input, pre, squash = records[index]
        if squash:
            curvature = curvature * _squashing_slope_squared(model, pre)
        curvature, per_param = _backprop_curvature(layer, layer_input, curvature)
        for name, value in per_param.items():
            diagonal[f"{names[layer]}.{name}"] = value / len(images)
        if layer is model.f6:  # F6 read C5's maps flattened
            curvature = curvature.view(records[index - 1][2].shape)
    return diagonal


class SDLM(torch.optim.Optimizer):
    """w_k <- w_k - B * lr / (mu + h_kk) * grad_k.

    `lr` is the paper's per-pattern eta (what the schedule sets and the run logs). With the
    batch-mean loss over B = `patterns_per_update` patterns, the B factor makes one update the
    sum of the paper's B per-pattern steps taken at one point (the mini-batch form; B = 1 is
    the paper's pure stochastic form). h_kk comes from `set_curvature` (zero until then,
    which makes a step plain SGD with rate B * lr / mu).
    """

    def __init__(self, params, lr: float, mu: float = PAPER_MU, patterns_per_update: int = 1):
        super().__init__(params, {"lr": lr, "mu": mu, "patterns_per_update": patterns_per_update})

    def set_curvature(self, curvature_by_param: dict[torch.nn.Parameter, torch.Tensor], weight: float = 1.0) -> None:
        """h <- (1 - weight) * h + weight * new: `weight` 1 replaces h (the paper's estimate
        before each pass), a smaller one blends the new estimate into a running average (SN2.8)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p not in curvature_by_param:
                    continue
                new = curvature_by_param[p].detach().to(p.device, p.dtype)
                old = self.state[p].get("h")
                self.state[p]["h"] = new.clone() if old is None or weight >= 1 else old.mul_(1 - weight).add_(new, alpha=weight)

    def curvature(self, p: torch.nn.Parameter) -> torch.Tensor:
        """h_kk of `p` (shaped like it); zero until `set_curvature` gives one."""
        h = self.state[p].get("h")
        return h if h is not None else torch.zeros_like(p)

    def effective_steps(self) -> dict[torch.nn.Parameter, torch.Tensor]:
        """eta / (mu + h_kk) per parameter, per pattern (the quantity the paper quotes for its
        first pass, 7e-5 to 0.016), with the group's current eta."""
        return {p: group["lr"] / (group["mu"] + self.curvature(p)) for group in self.param_groups for p in group["params"]}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.addcdiv_(p.grad, group["mu"] + self.curvature(p), value=-group["lr"] * group["patterns_per_update"])
        return loss
