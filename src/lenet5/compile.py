"""`trainer.compile`: the network's training forward (and, through AOTAutograd, its backward)
compiled by `torch.compile` where that pays, eager elsewhere; in a stack (stacked.py), the
whole vmapped forward-and-gradient step of the K models.

`auto` (default) compiles on a CUDA GPU with mode "reduce-overhead" (Inductor kernels replayed
as CUDA graphs: LeNet-5's kernels are tiny, so at small batches a step is mostly launch
overhead, which the graphs remove) and not on a CPU. `true` compiles on any device ("default"
mode on a CPU, which has no CUDA graphs); `false` never does.

Why not on a CPU, as measured (docs/performance.md#compiling-a-single-run-on-a-cpu): a single
run compiles the network's forward and backward only, and on a CPU thread Inductor's code for
them is no faster than eager at a batch of 4 (`paper`: 0.93x to 1.10x the time, within the
noise) and 1.5x slower at a batch of 64 (`modern`), with `trainer.deterministic` on or off
alike (benchmarks/compile_step.py). SDLM's per-batch curvature pass, half of a `paper`
step, stays eager in a single run. No run is long enough to repay a compile that gains nothing,
so `auto` never compiles a single run on a CPU. Where compiling does pay on a CPU is a stack,
whose whole vmapped step and per-batch curvature pass are compiled (1.7x to 1.9x); the studies
ask for it with `true`.

Compiling can fail where eager training works (no C++ compiler for Inductor's CPU kernels,
an operator Dynamo cannot trace): then the run says so in one line and trains eagerly.
Evaluation, SDLM's curvature pass and the artifacts use the eager network, which shares
the compiled one's weights; in a stack, SDLM's per-batch curvature pass is compiled as well
(the estimate on samples before each pass stays eager).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from .adapters import compile_error_types

#: What `trainer.compile` accepts (Hydra reads true/false as booleans; both spellings work).
COMPILE_CHOICES = ("auto", "true", "false")


def compile_setting(cfg: Any) -> str:
    """`trainer.compile` as one of COMPILE_CHOICES (true/false may arrive as booleans)."""
    return str(cfg.trainer.compile).lower()


def compile_mode(setting: str, device: torch.device) -> str | None:
    """The torch.compile mode for `setting` on `device`, or None for eager."""
    if setting == "false" or (setting == "auto" and device.type != "cuda"):
        return None
    return "reduce-overhead" if device.type == "cuda" else "default"


class CompiledOrEager:
    """`fn` (a network, or a function of tensors) compiled with `mode`; eager after a one-line
    warning if compiling fails.

    Not an nn.Module on purpose: held by the LightningModule, it adds no second copy of the
    network's weights to its state dict (checkpoints stay loadable either way).
    """

    def __init__(self, fn: Callable, mode: str):
        self.eager, self.mode = fn, mode
        self.compiled: Callable | None = torch.compile(fn, mode=mode)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except compile_error_types() as err:
                first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                warnings.warn(f"trainer.compile: torch.compile (mode {self.mode}) failed, training eagerly: {first_line}", stacklevel=2)
                self.compiled = None
        return self.eager(*args)
