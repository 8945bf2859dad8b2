"""Which jobs of a sweep can train together as one stacked model (stacked.py), and in what groups.

Two jobs can share a stack when their configs are equal except for the keys in
`STACKABLE_KEYS`: the seed (which sets the initial weights, the data order and SDLM's
curvature sample) and the optimizer's per-model numbers. Everything else (architecture,
loss, data, batch size, passes, schedule, optimizer kind) must be equal, because one
stack runs one network shape on batches of one size for one number of passes.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .identity import flatten_config

#: Keys whose values may differ between the models of one stack: each model carries its own.
STACKABLE_KEYS = ("seed", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.mu")


def stack_key(cfg: Any) -> str:
    """The job's config without `STACKABLE_KEYS`, as a string: equal keys, stackable jobs."""
    flat = flatten_config(cfg)
    return json.dumps({k: v for k, v in flat.items() if k not in STACKABLE_KEYS}, sort_keys=True)


def partition(cfgs: Sequence[Any], models_per_process: int) -> list[list[int]]:
    """Indices of `cfgs` in groups of at most `models_per_process` stackable jobs.

    Groups keep the jobs' order (the first group holds the first job); jobs of one key fill
    groups of `models_per_process` before a new one starts, so K jobs of one key in a
    sweep of models_per_process = K make one group.
    """
    if models_per_process < 1:
        raise ValueError(f"models_per_process={models_per_process} must be >= 1")
    by_key: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        by_key.setdefault(stack_key(cfg), []).append(index)
    groups = []
    for members in by_key.values():
        groups += [members[i : i + models_per_process] for i in range(0, len(members), models_per_process)]
    return sorted(groups, key=lambda group: group[0])
