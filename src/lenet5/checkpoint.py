"""A job's checkpoint: one model's training state after k passes, in the one format both
engines save after every pass and either can continue from. A job killed while training
alone may so continue in a stack, and one killed in a stack may continue alone.

The state (`Checkpoint`) is a dict of plain tensors and numbers on the CPU, holding nothing of
any other model (0.5 MB for LeNet-5), saved with `torch.save` as `checkpoints/slot<k>.pt`
(resume.py). No global RNG: training draws only from the generators it holds.

This module converts between the format and a torch optimizer (`SDLM`, SGD, Adam) and its
scheduler, for Lightning's loop; the stack reads and writes its stacked tensors itself
(`StackedTraining.member_state`), under the same keys.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

#: The file suffix of a checkpoint; a run whose checkpoint has another (`.ckpt`: Lightning's
#: own, written before this format) cannot be continued and its job starts again.
SUFFIX = ".pt"

#: Per-parameter state of torch's optimizers that the format keeps under `optimizer_state`.
#: SDLM's `h` goes to `curvature`, and Adam's per-parameter `step` to `optimizer_steps`.
RULE_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


#: The format, key by key (a functional TypedDict: `pass` is a Python keyword).
Checkpoint = TypedDict("Checkpoint", {
    "pass": int,  # passes completed
    "weights": dict[str, torch.Tensor],  # parameter name ("c1.weight") -> tensor of its own shape
    "optimizer_steps": int,  # updates made (Adam's bias correction counts them)
    "optimizer_state": dict[str, dict[str, torch.Tensor]],  # name -> {RULE_STATE_KEYS member: tensor}
    "curvature": dict[str, torch.Tensor],  # SDLM's h_kk, name -> tensor
    # {"state": {}, "param_groups": [one group]}: the rate and the rule's settings as the rate
    # schedule left them (`initial_lr` included), as an optimizer of one parameter saves them
    "schedule_optimizer": dict[str, Any],
    "schedule": dict[str, Any] | None,  # the rate scheduler's state_dict(); None for a constant rate
    "order_generator": torch.Tensor,  # torch.Generator state of the data order
    "curvature_generator": torch.Tensor | None,  # ... of SDLM's curvature sample (None without SDLM)
    "patterns_since_estimate": int,  # patterns since SDLM last re-estimated h_kk
})  # fmt: skip


def save(state: Checkpoint, path: str) -> None:
    torch.save(state, path)


def load(path: str) -> Checkpoint:
    return torch.load(path, map_location="cpu", weights_only=True)


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
        # One group over all parameters; saved as an optimizer of one parameter saves its group.
        "schedule_optimizer": {"state": {}, "param_groups": [{**optimizer.param_groups[0], "params": [0]}]},
        "schedule": scheduler.state_dict() if scheduler is not None else None,
    }


@torch.no_grad()
def load_weights(model: torch.nn.Module, state: Checkpoint) -> None:
    for name, p in model.named_parameters():
        p.copy_(state["weights"][name])


@torch.no_grad()
def load_optimizer_fields(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: Checkpoint) -> None:
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
