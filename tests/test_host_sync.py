"""No training step reads a tensor back to the host (on a GPU, each such read stalls the queue).

A CPU has no queue to stall, but the reads are the same Python calls on either device
(`.item()`, `bool(tensor)`, `.tolist()`, `.nonzero()`, ...): recording them through a
TorchFunctionMode while the steps run proves the GPU path free of them without a GPU.
The epoch boundaries (NaN check, metric logging, SDLM telemetry) read once a pass, by design.
"""

from __future__ import annotations

import pytest

import lightning as L
import torch
from torch.overrides import TorchFunctionMode

from lenet5.stacked import StackedTraining
from lenet5.jobs import prepare
from lenet5.train import make_trainer

from .helpers import compose

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

#: Tensor operations that hand a value to Python (a device-to-host copy and a wait on a GPU).
HOST_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "cpu", "numpy", "__array__", "any", "all"}

#: A small job through every per-step path: SDLM with its per-batch curvature blend, and the
#: paper's distortions (their batches are warped as they are served).
JOB = [
    "experiment=paper_distortions", "data.train_subset=48", "data.distorted_copies=2", "data.test_subset=48",
    "optim.curvature_samples=16", "trainer.max_epochs=1", "trainer.progress_bar=false",
]  # fmt: skip


class HostReads(TorchFunctionMode):
    """Records the names of HOST_READS operations called while it is active."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


class RecordTheBatches(L.Callback):
    """Active from the last epoch-start hook of the callbacks to the first epoch-end one:
    every batch of the pass, its serving, step, update and hooks included."""

    def __init__(self):
        self.mode = HostReads()
        self.batches = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.mode.__exit__(None, None, None)


def test_no_host_read_in_a_lightning_training_step():
    cfg = compose(*JOB)
    datamodule, module = prepare(cfg)
    trainer = make_trainer(module, logger=False)
    recorder = RecordTheBatches()
    trainer.callbacks.append(recorder)  # last: after the SDLM callback's once-a-pass estimate
    trainer.fit(module, datamodule=datamodule)
    assert recorder.batches == 48 * 3 // 4  # it did watch every step
    assert recorder.mode.seen == []


def test_the_recorder_sees_a_host_read():
    """The check above can fail: one `.item()` in a step is caught."""
    with HostReads() as mode:
        torch.ones(2).sum().item()
        bool(torch.ones(1) > 0)
    assert mode.seen == ["item", "__bool__"]


def test_no_host_read_in_a_stacked_training_step(monkeypatch):
    cfgs = [compose(*JOB, f"seed={seed}") for seed in (0, 1)]
    prepared = [prepare(c, check_data=i == 0, check_tracking=False) for i, c in enumerate(cfgs)]
    datamodule = prepared[0][0]
    datamodule.setup()
    training = StackedTraining([m for _, m in prepared], datamodule, torch.device("cpu"))
    mode, steps = HostReads(), []
    step = training._step

    def recorded(*args):
        steps.append(1)
        with mode:
            step(*args)

    monkeypatch.setattr(training, "_step", recorded)
    (result,) = list(training.passes())
    assert len(steps) == 48 * 3 // 4 and result.metrics[0]["train_error"] >= 0
    assert mode.seen == []
