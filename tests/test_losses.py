"""The paper's criteria against their equations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lenet5.config import Head, LossConfig, LossName
from lenet5.losses import make_loss, rbf_map_loss, rbf_mle_loss


def test_mle_is_distance_to_the_correct_class():
    distances = torch.rand(6, 10) * 50
    target = torch.randint(0, 10, (6,))
    assert torch.equal(rbf_mle_loss(distances, target), distances[torch.arange(6), target])


def test_map_follows_equation_nine():
    distances = torch.rand(4, 10, dtype=torch.float64) * 20
    target = torch.tensor([0, 3, 9, 5])
    j = 1.5
    for n in range(4):
        expected = distances[n, target[n]] + math.log(math.exp(-j) + sum(math.exp(-d) for d in distances[n].tolist()))
        assert abs(rbf_map_loss(distances, target, j)[n].item() - expected) < 1e-9


def test_map_becomes_cross_entropy_on_negative_distances_as_j_grows():
    distances = torch.rand(8, 10, dtype=torch.float64) * 5
    target = torch.randint(0, 10, (8,))
    ce = F.cross_entropy(-distances, target, reduction="none")
    torch.testing.assert_close(rbf_map_loss(distances, target, 60.0), ce)
    assert (rbf_map_loss(distances, target, 0.0) > ce).all()  # e^-j is one more competitor in the log


def test_cross_entropy_reads_rbf_distances_as_negative_logits():
    distances = torch.rand(3, 10)
    target = torch.tensor([1, 2, 3])
    torch.testing.assert_close(make_loss(LossConfig(name=LossName.cross_entropy), Head.rbf)(distances, target), F.cross_entropy(-distances, target, reduction="none"))
    torch.testing.assert_close(make_loss(LossConfig(name=LossName.cross_entropy), Head.softmax)(distances, target), F.cross_entropy(distances, target, reduction="none"))
