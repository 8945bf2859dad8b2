"""The rules both training engines follow, written once: Lightning's loop for a single job
(train.py, module.py) and the stack (stacked_train.py, stacked.py) each call these rather
than keeping their own copy. The loss reduction they share is `losses.reduce_loss`, the job
claim `resume.JobClaim.for_job`, what a run records `recording.py`.
"""

from __future__ import annotations

import math
import os

import torch

from .config import TrainerConfig


def training_device(trainer: TrainerConfig) -> torch.device:
    """The device `trainer.accelerator` names (auto: a CUDA GPU when present, else the CPU)."""
    accelerator = str(trainer.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def use_deterministic_kernels(enabled: bool) -> None:
    """`trainer.deterministic`: deterministic kernels wherever PyTorch has them (all of them on
    the CPU), a warning rather than a crash for the few GPU ops that have none.

    What Lightning's `Trainer(deterministic="warn")` sets, done here so that the stack, which
    has no Trainer, sets the same; the Trainer is then built with `deterministic=None`, which
    leaves these flags alone.
    """
    if enabled:
        # cuBLAS is deterministic only with a fixed workspace; read when CUDA starts up.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def check_finite(train_loss: float | torch.Tensor, epoch: int) -> None:
    """The NaN stop: raise FloatingPointError when a pass's mean training loss is not finite.

    Checked once per pass, on the pass's mean (a NaN in any batch makes it NaN): a check per
    step would read the loss back to the host every step. `epoch` is 1-based.
    """
    value = float(train_loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} in epoch {epoch}")
