"""Optimizers and learning-rate schedules, built from the config's typed `optim` section."""

from __future__ import annotations

from typing import Iterable

import torch

from .config import OptimConfig, OptimName, Schedule
from .sdlm import SDLM, paper_eta


def make_optimizer(params: Iterable[torch.nn.Parameter], optim_cfg: OptimConfig, batch_size: int = 1) -> torch.optim.Optimizer:
    """`batch_size` matters only to SDLM: with the batch-mean loss, its mini-batch form steps by
    batch_size x eta, i.e. the sum of the paper's per-pattern steps taken at one point."""
    name = optim_cfg.name
    if name == OptimName.sdlm:
        return SDLM(params, lr=optim_cfg.lr, mu=optim_cfg.mu, patterns_per_update=batch_size)
    if name == OptimName.sgd:
        return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)
    if name == OptimName.adam:
        return torch.optim.Adam(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay)
    raise AssertionError(name)  # the schema's enum admits nothing else


def make_schedule(optimizer: torch.optim.Optimizer, optim_cfg: OptimConfig, max_epochs: int):
    """Per-epoch LR scheduler, or None for `constant`."""
    schedule = optim_cfg.schedule
    if schedule == Schedule.paper:
        # LambdaLR counts finished epochs from 0; pass numbers in the paper start at 1.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: paper_eta(epoch + 1) / paper_eta(1))
    if schedule == Schedule.cosine:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    if schedule == Schedule.step:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim_cfg.step_epochs, gamma=optim_cfg.gamma)
    return None
