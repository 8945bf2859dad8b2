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
every layer (convolution, C3 table, subsampling, linear) gets its rule from autograd, and
the whole network's h_kk comes from one backward pass of that squared surrogate network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp

from .config import Head
from .model.activations import squashing_slope
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


def _carried(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """`value`, through which a backward pass reaches `carrier` with gradient 1.

    The curvature pass below is one backward pass of a surrogate network: each layer runs with
    squared weights on its squared real input (so the weight gradients are sum d2E/da^2 x^2),
    while the gradient with respect to that input is routed to the layer below (so it is
    sum w^2 d2E/da^2). The carrier's own value never matters.
    """
    return value + (carrier - carrier.detach())


def gauss_newton_diagonal(
    model: LeNet5, images: torch.Tensor, params: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """h_kk per trainable parameter (name -> tensor shaped like it), averaged over `images` (N, 1, S, S).

    `params` (name -> tensor, default: the model's own) makes this a pure function of the
    weights, so `torch.func.vmap` can run it over a stack of models.

    The output curvature is the Gauss-Newton one of the paper's criterion: for the RBF head,
    y_D = sum_j (x_j - w_Dj)^2 gives d2E/dx_j^2 = 2 on every F6 state (it does not depend on
    the label); for a softmax head, cross-entropy gives p_i (1 - p_i) on the logits.
    """
    own_weights = params is None
    if own_weights:
        params = dict(model.named_parameters())
    params = {name: p.detach() for name, p in params.items()}
    owner = {module: prefix for prefix, module in model.named_modules()}
    stages = model.stages()
    if model.head_kind == Head.rbf:
        stages = stages[:-1]  # the RBF layer has nothing to train

    # The real forward pass: each layer's input, its pre-activation and f'^2 where f follows.
    records = []
    x = images
    for layer, squash in stages:
        if layer is model.f6:
            x = x.flatten(1)
        if own_weights:
            with torch.no_grad():
                pre = layer(x)
        else:
            own = {name.split(".", 1)[1]: p for name, p in params.items() if name.split(".", 1)[0] == owner[layer]}
            pre = functional_call(layer, own, (x,))
        route = None
        if isinstance(layer, nn.MaxPool2d):
            _, route = F.max_pool2d(x, layer.kernel_size, ceil_mode=layer.ceil_mode, return_indices=True)
        records.append((layer, x, pre, route, squashing_slope(model.f, pre).square() if squash else None))
        x = model.f(pre) if squash else pre
    if model.head_kind == Head.rbf:
        output_curvature = torch.full_like(x, 2.0)
    else:
        probabilities = F.softmax(x, dim=1)
        output_curvature = probabilities * (1 - probabilities)

    def surrogate(squared: dict[str, torch.Tensor]) -> torch.Tensor:
        carrier = None
        for layer, layer_input, pre, route, slope_squared in records:
            if layer is model.f6 and carrier is not None:
                carrier = carrier.flatten(1)
            if isinstance(layer, nn.MaxPool2d):
                # Each output takes one input with weight 1 (squared: 1): route to the argmax.
                carrier = carrier.flatten(2).gather(2, route.flatten(2)).view_as(pre)
            elif isinstance(layer, nn.AvgPool2d):
                # Weights 1/k^2, squared 1/k^4.
                carrier = layer(carrier) / layer.kernel_size**2
            else:
                own = {name.split(".", 1)[1]: w for name, w in squared.items() if name.split(".", 1)[0] == owner[layer]}
                squared_input = layer_input.square()
                if carrier is not None:
                    squared_input = _carried(squared_input, carrier)
                carrier = functional_call(layer, own, (squared_input,))
            if slope_squared is not None:
                carrier = slope_squared * carrier
        return carrier

    squared = {name: p.square() for name, p in params.items() if name.split(".", 1)[0] in {owner[layer] for layer, _ in stages}}
    _, pullback = vjp(surrogate, squared)
    (diagonal,) = pullback(output_curvature)
    return {name: value / len(images) for name, value in diagonal.items()}


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
