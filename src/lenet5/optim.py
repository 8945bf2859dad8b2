"""Optimizers and learning-rate schedules, built from the `optim` config node."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .config import select


def make_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg: Any) -> torch.optim.Optimizer:
    name = select(optim_cfg, "name")
    if name == "sgd":
        return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay)
    raise AssertionError(name)  # the schema's enum admits nothing else


def make_schedule(optimizer: torch.optim.Optimizer, optim_cfg: Any, max_epochs: int):
    """Per-epoch LR scheduler, or None for `constant`."""
    schedule = select(optim_cfg, "schedule")
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim_cfg.step_epochs, gamma=optim_cfg.gamma)
    return None
