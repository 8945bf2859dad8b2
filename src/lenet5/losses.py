"""Training criteria: the paper's MLE (eq. 8) and MAP (eq. 9) on RBF distances, and cross-entropy.

Each returns the per-sample loss (N,); `reduce_loss` turns it into the loss a step minimises,
the one reduction both training engines use.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .config import Head, LossConfig, LossName, Reduction

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rbf_mle_loss(distances: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 8: y_D, the distance (N, 10) of each sample to its correct class's prototype -> (N,)."""
    return distances.gather(1, target.unsqueeze(1)).squeeze(1)


def rbf_map_loss(distances: torch.Tensor, target: torch.Tensor, j: float) -> torch.Tensor:
    """Eq. 9: y_D + log(e^-j + sum_i e^-y_i) -> (N,).

    The e^-j term acts as an extra 'rubbish' class at distance j: it stops the criterion
    from pushing already large distances further up. As j grows it becomes softmax
    cross-entropy on the logits -y_i.
    """
    rubbish = distances.new_full((distances.shape[0], 1), -j)
    return rbf_mle_loss(distances, target) + torch.logsumexp(torch.cat([rubbish, -distances], 1), 1)


def make_loss(config: LossConfig, head: Head) -> PerSampleLoss:
    """The criterion `config.name` for a network whose head is `head` (`rbf` outputs distances)."""
    if config.name == LossName.map:
        j = config.j
        return lambda out, target: rbf_map_loss(out, target, j)
    if config.name == LossName.mle:
        return rbf_mle_loss
    if head == Head.rbf:
        return lambda out, target: F.cross_entropy(-out, target, reduction="none")
    return lambda out, target: F.cross_entropy(out, target, reduction="none")


def reduce_loss(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Per-sample losses (B,) -> the batch's loss (): their mean, or their sum (both tutorials)."""
    return per_sample.sum() if reduction == Reduction.sum else per_sample.mean()


def check_loss_finite(train_loss: float | torch.Tensor, epoch: int) -> None:
    """The NaN stop both engines apply: raise FloatingPointError when a pass's mean training
    loss is not finite. Checked once per pass, on the pass's mean (a NaN in any batch makes it
    NaN): a check per step would read the loss back to the host every step. `epoch` is 1-based.
    """
    value = float(train_loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} in epoch {epoch}")
