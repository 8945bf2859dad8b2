"""SDLM, SGD and Adam for K models stacked along a leading dimension, each with its own settings.

Every parameter is one tensor (K, ...) (`torch.func.stack_module_state`); the update of model
k is the one its own optimizer (optim.py: `SDLM`, `torch.optim.SGD`, `torch.optim.Adam`)
would make, written as elementwise tensor arithmetic over the stack with the per-model
settings (rate, momentum, weight decay, mu) broadcast as (K, 1, ..., 1). One kernel per
parameter tensor and rule, whatever K is, instead of K optimizers.

The arithmetic follows the single-tensor paths of torch.optim term by term; where those
take a per-call Python scalar (`add_(x, alpha=-lr)`) this takes a tensor, which the CPU
kernels may round differently (fused multiply-add or not), so a stacked update equals the
single one to float32 rounding, not bit for bit.

Which settings may differ between the models of one stack (the rest must be equal):
`grouping.STACKABLE_KEYS`.
"""

from __future__ import annotations

from functools import lru_cache
import torch

from .config import OptimConfig, OptimName
from .grouping import STACKABLE_KEYS


def per_model(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """(K,) Python numbers -> (K, 1, ..., 1) on `like`'s device and dtype, to broadcast over a (K, ...) parameter."""
    return _per_model(tuple(values), like.dim(), like.dtype, like.device)


#: The optimizer settings each model of a stack may set on its own, read from the configs once
#: (the rate is not one of them: it follows each model's schedule and comes with every step).
PER_MODEL_SETTINGS = tuple(key.removeprefix("optim.") for key in STACKABLE_KEYS if key.startswith("optim.") and key != "optim.lr")


@lru_cache(maxsize=1024)
def _per_model(values: tuple[float, ...], dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Cached: the settings change once a pass at most, and building a tensor from Python numbers
    # on a GPU is a host-to-device copy that would otherwise happen for every parameter every step.
    return torch.tensor(values, dtype=dtype, device=device).view(-1, *([1] * (dim - 1)))


class StackedOptimizer:
    """The update rule `optim.name` for K stacked models.

    `params`: name -> (K, ...) tensor, updated in place by `step`. `optim_cfgs`: the K models'
    typed `optim` sections (same `name` and `betas`; rate, momentum, weight decay and mu may differ).
    `batch_size` is SDLM's patterns per update (optim.py, `make_optimizer`).

    SDLM's h_kk live in `curvature` (name -> (K, ...)), set by `set_curvature`; zero until then.
    """

    def __init__(self, params: dict[str, torch.Tensor], optim_cfgs: list[OptimConfig], batch_size: int):
        names = {c.name for c in optim_cfgs}
        if len(names) != 1:
            raise ValueError(f"one stack trains with one optimizer, got {sorted(names)}")
        (self.name,) = names
        self.batch_size = batch_size
        self.steps = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in params}
        self.curvature: dict[str, torch.Tensor] = {}
        # The settings as plain numbers, read from the configs once: an OmegaConf lookup per
        # parameter per step was 12 % of a compiled SDLM stack's step on a CPU (profiled).
        self.settings = {key: tuple(float(getattr(c, key)) for c in optim_cfgs) for key in PER_MODEL_SETTINGS}
        self.betas = tuple(float(b) for b in optim_cfgs[0].betas)  # equal in a stack (grouping.py)
        self.any_momentum = any(self.settings["momentum"])
        self.any_decay = any(self.settings["weight_decay"])

    def setting(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """Setting `key` (one of PER_MODEL_SETTINGS) of every model, as (K, 1, ..., 1) to broadcast over `like`."""
        return _per_model(self.settings[key], like.dim(), like.dtype, like.device)

    def set_curvature(self, new: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        """h <- (1 - weight) h + weight new, per model (`SDLM.set_curvature`'s rule); `new`: name -> (K, ...)."""
        for name, value in new.items():
            value = value.detach()
            old = self.curvature.get(name)
            self.curvature[name] = value.clone() if old is None or weight >= 1 else old.mul_(1 - weight).add_(value, alpha=weight)

    def effective_steps(self, lrs: list[float], name: str, like: torch.Tensor) -> torch.Tensor:
        """SDLM's eta / (mu + h_kk) per model (K, ...), with each model's eta `lrs[k]` (per pattern)."""
        h = self.curvature.get(name, torch.zeros_like(like))
        return per_model(lrs, like) / (self.setting("mu", like) + h)

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lrs: list[float]) -> None:
        """One update of every model; `lrs[k]`: model k's rate this pass (its schedule's value)."""
        self.steps += 1
        for name, p in params.items():
            grad = grads[name]
            if self.name == OptimName.sdlm:
                h = self.curvature.get(name, torch.zeros_like(p))
                # SDLM.step: p.addcdiv_(grad, mu + h, value=-lr * B), i.e. p + ((value * grad) / denom),
                # the value formed in double precision as Python forms it.
                value = per_model([-lr * self.batch_size for lr in lrs], p)
                p.add_(value * grad / (self.setting("mu", p) + h))
                continue
            if self.any_decay:
                grad = grad + self.setting("weight_decay", p) * p
            if self.name == OptimName.sgd:
                if self.any_momentum:
                    state = self.state[name]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()
                    else:
                        state["momentum_buffer"].mul_(self.setting("momentum", p)).add_(grad)
                    grad = state["momentum_buffer"]
                p.add_(per_model([-lr for lr in lrs], p) * grad)
            elif self.name == OptimName.adam:
                self._adam(name, p, grad, lrs)
            else:
                raise AssertionError(self.name)  # the schema's enum admits nothing else

    def _adam(self, name: str, p: torch.Tensor, grad: torch.Tensor, lrs: list[float]) -> None:
        beta1, beta2 = self.betas
        state = self.state[name]
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        neg_step_size = per_model([-lr / bias_correction1 for lr in lrs], p)  # in double, as torch forms it
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(1e-8)  # torch.optim.Adam's default eps
        p.add_(neg_step_size * exp_avg / denom)
