"""A job's checkpoint: one model's training state after k passes, in the one format both
engines save after every pass and either can continue from. A job killed while training
alone may so continue in a stack, and one killed in a stack may continue alone.

The state is a dict of plain tensors and numbers on the CPU, holding nothing of any other
model (0.5 MB for LeNet-5), saved with `torch.save` as `checkpoints/slot<k>.pt` (resume.py):

- `pass`: passes completed;
- `weights`: parameter name ("c1.weight") -> tensor of the parameter's own shape;
- `optimizer_steps`: updates made (Adam's bias correction counts them);
- `optimizer_state`: name -> {"momentum_buffer" | "exp_avg" | "exp_avg_sq": tensor};
- `curvature`: SDLM's h_kk, name -> tensor;
- `schedule_optimizer`: {"state": {}, "param_groups": [one group]}: the rate and the rule's
  settings as the rate schedule left them (`initial_lr` included);
- `schedule`: the rate scheduler's `state_dict()`, or None for a constant rate;
- `order_generator`, `curvature_generator`: torch.Generator states of the data order and of
  SDLM's curvature sample (None without SDLM);
- `patterns_since_estimate`: patterns since SDLM last re-estimated h_kk.

No global RNG: training draws only from these generators.

This module converts between the format and a torch optimizer (`SDLM`, SGD, Adam) and its
scheduler, for Lightning's loop; the stack reads and writes its stacked tensors itself
(`StackedTraining.member_state`), under the same keys.
"""

from __future__ import annotations

from typing import Any

import torch

#: The file suffix of a checkpoint; a run whose checkpoint has another (`.ckpt`: Lightning's
#: own, written before this format) cannot be continued and its job starts again.
SUFFIX = ".pt"

#: Per-parameter state of torch's optimizers that the format keeps under `optimizer_state`.
#: SDLM's `h` goes to `curvature`, and Adam's per-parameter `step` to `optimizer_steps`.
RULE_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def save(state: dict[str, Any], path: str) -> None:
    torch.save(state, path)


def load(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def schedule_group(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's rate and settings as `schedule_optimizer` holds them: one group of one parameter."""
    (group,) = optimizer.state_dict()["param_groups"]
    return {"state": {}, "param_groups": [{**group, "params": [0]}]}


def optimizer_fields(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, steps: int) -> dict[str, Any]:
    """The format's weights, optimizer and schedule fields of `model` trained by `optimizer`
    (one param group over `model.parameters()`), `scheduler` (or None) and `steps` updates."""
    cpu = lambda t: t.detach().cpu().clone()  # noqa: E731
    names = {p: name for name, p in model.named_parameters()}
    rule_state, curvature = {}, {}
    for p, state in optimizer.state.items():
        kept = {key: cpu(state[key]) for key in RULE_STATE_KEYS if state.get(key) is not None}
        if kept:
            rule_state[names[p]] = kept
        if state.get("h") is not None:
            curvature[names[p]] = cpu(state["h"])
    return {
        "weights": {name: cpu(p) for name, p in model.named_parameters()},
        "optimizer_steps": steps,
        "optimizer_state": rule_state,
        "curvature": curvature,
        "schedule_optimizer": schedule_group(optimizer),
        "schedule": scheduler.state_dict() if scheduler is not None else None,
    }


@torch.no_grad()
def load_weights(model: torch.nn.Module, state: dict[str, Any]) -> None:
    for name, p in model.named_parameters():
        p.copy_(state["weights"][name])


@torch.no_grad()
def load_optimizer_fields(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]) -> None:
    """Continue `optimizer` (and `scheduler`), built afresh over `model.parameters()`, from `state`."""
    (saved_group,) = state["schedule_optimizer"]["param_groups"]
    (group,) = optimizer.param_groups
    group.update({key: value for key, value in saved_group.items() if key != "params"})
    is_adam = isinstance(optimizer, torch.optim.Adam)
    for name, p in model.named_parameters():
        own = {key: t.to(p.device) for key, t in state["optimizer_state"].get(name, {}).items()}
        if name in state["curvature"]:
            own["h"] = state["curvature"][name].to(p.device)
        if is_adam and own:
            own["step"] = torch.tensor(float(state["optimizer_steps"]), dtype=torch.float32)  # as torch.optim.Adam keeps it
        if own:
            optimizer.state[p] = own
    if scheduler is not None:
        scheduler.load_state_dict(state["schedule"])
