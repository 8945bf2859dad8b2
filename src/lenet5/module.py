"""The LightningModule that trains any LeNet-5 variant.

Logged once per epoch, with MLflow step = epochs completed (1, 2, ...): `train_loss`,
`train_error` (running error over the epoch, %), `test_error` and `val_error` (%, after
the epoch), `lr` (the rate that epoch trained with).

A run continued from a checkpoint (checkpoint.py) trains its remaining passes in a Trainer of
that many epochs: `first_pass` passes are done before it starts, and every pass number
logged or saved counts them.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from . import checkpoint
from .callbacks import SDLMCurvature
from .compile import CompiledOrEager, compile_mode, compile_setting
from .config import Config
from .losses import check_loss_finite, make_loss, reduce_loss
from .model.lenet5 import LeNet5
from .optim import make_optimizer, make_schedule


class MeanOfBatches:
    """The mean of the batch means added (a 0-dim float32 tensor), without a host read per step.

    The same float32 arithmetic as torchmetrics' MeanMetric(nan_strategy="disable"), which the
    module used before (its numbers are pinned, tests/test_numerics.py): each add sums into one
    float32 tensor, the mean divides by the batches as a float32 tensor. At a batch of 4 the
    metric object's Python cost per update was several times that of the two tensor ops here.
    """

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.batches = 0

    def add(self, batch_mean: torch.Tensor) -> None:
        if self.total is None:
            self.total = torch.zeros((), dtype=batch_mean.dtype, device=batch_mean.device)
        self.total.add_(batch_mean)
        self.batches += 1

    def compute(self) -> torch.Tensor:
        total = self.total if self.total is not None else torch.zeros(())
        return total / torch.tensor(float(self.batches), dtype=total.dtype, device=total.device)

    def reset(self) -> None:
        self.total, self.batches = None, 0


class Accuracy:
    """The share of correct predictions added (0-dim float32 tensor), without a host read per
    step: the correct count sums on the device, the pattern count is a Python int (shapes only).

    The same arithmetic as torchmetrics' micro MulticlassAccuracy, which the module used before:
    the correct count (int64) over all patterns, both cast to float32 and divided.
    """

    def __init__(self):
        self.correct: torch.Tensor | None = None
        self.patterns = 0

    def add(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """`predictions` and `labels`: class indices (B,)."""
        hits = (predictions == labels).sum()
        self.correct = hits if self.correct is None else self.correct.add_(hits)
        self.patterns += labels.numel()

    def compute(self) -> torch.Tensor:
        if self.correct is None:
            return torch.zeros(())  # no pattern: 0, as torchmetrics' safe division gives
        return self.correct.float() / torch.tensor(self.patterns, dtype=torch.long, device=self.correct.device).float()

    def reset(self) -> None:
        self.correct, self.patterns = None, 0


class LeNet5Module(L.LightningModule):
    """`config` is the whole config, typed (`config.as_config`); `input_size` comes from the data
    preprocessing; `eval_split_names` names the validation loaders in order (e.g. ["test", "val"])."""

    def __init__(self, config: Config, input_size: int, eval_split_names: list[str]):
        super().__init__()
        self.config = config
        self.model = LeNet5(config.model, input_size)
        self.loss_fn = make_loss(config.loss, self.model.head_kind)
        self.eval_split_names = eval_split_names
        # Neither tally synchronises with the host per step, and a NaN loss is kept, not
        # dropped: on_train_epoch_end checks the pass's mean once.
        self.train_loss = MeanOfBatches()
        self.train_accuracy = Accuracy()
        self.eval_accuracy = {name: Accuracy() for name in eval_split_names}
        self.train_forward: CompiledOrEager | None = None  # set once the device is known
        self.first_pass, self.first_steps = 0, 0
        self.resumed: checkpoint.Checkpoint | None = None  # the checkpoint being continued, until its optimizer state is in

    @property
    def passes_done(self) -> int:
        """Passes completed: at a pass's start, those before it; after training, all of them."""
        return self.first_pass + self.current_epoch

    def continue_from(self, state: checkpoint.Checkpoint) -> None:
        """Start from checkpoint `state` (checkpoint.py): its weights now, its optimizer and
        schedule once the Trainer has built them (on_train_start). Call before `fit`."""
        checkpoint.load_weights(self.model, state)
        self.first_pass, self.first_steps, self.resumed = state["pass"], state["optimizer_steps"], state

    def _training_parts(self) -> tuple[torch.optim.Optimizer, Any, torch.Generator, SDLMCurvature | None]:
        """What the Trainer built that a checkpoint holds the state of: the optimizer, its rate
        scheduler (or None), the data order's generator and the SDLM callback (or None)."""
        trainer = self.trainer
        schedulers = trainer.lr_scheduler_configs
        sdlm = next((c for c in trainer.callbacks if isinstance(c, SDLMCurvature)), None)
        scheduler = schedulers[0].scheduler if schedulers else None
        return trainer.optimizers[0], scheduler, trainer.datamodule.train_batches.generator, sdlm

    def training_state(self) -> checkpoint.Checkpoint:
        """This model's checkpoint as training stands: call between passes
        (`resume.PassCheckpoint` does, as a pass starts and when training ends)."""
        optimizer, scheduler, order, sdlm = self._training_parts()
        steps = self.first_steps + self.trainer.global_step
        return {
            "pass": self.passes_done,
            **checkpoint.optimizer_fields(self.model, optimizer, scheduler, steps),
            "order_generator": order.get_state(),
            "curvature_generator": sdlm.generator.get_state() if sdlm is not None else None,
            "patterns_since_estimate": sdlm.patterns_since_estimate if sdlm is not None else 0,
        }

    def on_train_start(self) -> None:
        # The Trainer has built the optimizer, the schedule and the training batches by now,
        # and drawn nothing yet: the rest of the checkpoint goes in here, in one place.
        if self.resumed is None:
            return
        state = self.resumed
        optimizer, scheduler, order, sdlm = self._training_parts()
        checkpoint.load_optimizer_fields(self.model, optimizer, scheduler, state)
        order.set_state(state["order_generator"])
        if sdlm is not None:
            sdlm.generator.set_state(state["curvature_generator"])
            sdlm.patterns_since_estimate = state["patterns_since_estimate"]
        self.resumed = None

    def on_fit_start(self) -> None:
        mode = compile_mode(compile_setting(self.config), self.device)
        self.train_forward = CompiledOrEager(self.model, mode) if mode is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        out = (self.train_forward or self.model)(images)
        per_sample = self.loss_fn(out, labels)
        loss = reduce_loss(per_sample, self.config.loss.reduction)
        self.tally(per_sample, out, labels)
        return loss

    def tally(self, per_sample: torch.Tensor, out: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a training batch to the pass's train_loss (the mean of the batch means: each batch
        counts once, whatever its size, as it always has) and train_error."""
        self.train_loss.add(per_sample.detach().mean())
        self.train_accuracy.add(self.model.predict(out.detach()), labels)

    def on_train_epoch_start(self) -> None:
        # Lightning steps epoch-interval schedulers after the epoch's last batch, before
        # on_train_epoch_end: read the rate here, or the log would show the next epoch's.
        self.epoch_lr = self.optimizers().param_groups[0]["lr"]

    def on_train_epoch_end(self) -> None:
        loss = self.train_loss.compute()
        check_loss_finite(loss, self.passes_done + 1)
        self.log("train_loss", loss)
        self.log("train_error", 100.0 * (1.0 - self.train_accuracy.compute()))
        self.log("lr", self.epoch_lr)
        self.log("step", float(self.passes_done + 1))  # Lightning sends this as the MLflow step
        self.train_loss.reset()
        self.train_accuracy.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        self.eval_accuracy[self.eval_split_names[dataloader_idx]].add(self.model.predict(self.model(images)), labels)

    def on_validation_epoch_end(self) -> None:
        for name, accuracy in self.eval_accuracy.items():
            self.log(f"{name}_error", 100.0 * (1.0 - accuracy.compute()), add_dataloader_idx=False)
            accuracy.reset()
        self.log("step", float(self.passes_done + 1))

    def configure_optimizers(self):
        config = self.config
        optimizer = make_optimizer(self.model.parameters(), config.optim, config.data.batch_size)
        scheduler = make_schedule(optimizer, config.optim, config.trainer.max_epochs)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
