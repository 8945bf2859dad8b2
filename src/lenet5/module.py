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
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from . import checkpoint
from .callbacks import SDLMCurvature
from .compile import CompiledOrEager, compile_mode, compile_setting
from .config import Config
from .losses import check_loss_finite, make_loss, reduce_loss
from .model.lenet5 import CLASSES, LeNet5
from .optim import make_optimizer, make_schedule


class LeNet5Module(L.LightningModule):
    """`config` is the whole config, typed (`config.as_config`); `input_size` comes from the data
    preprocessing; `eval_split_names` names the validation loaders in order (e.g. ["test", "val"])."""

    def __init__(self, config: Config, input_size: int, eval_split_names: list[str]):
        super().__init__()
        self.config = config
        self.model = LeNet5(config.model, input_size)
        self.loss_fn = make_loss(config.loss, self.model.head_kind)
        self.eval_split_names = eval_split_names
        # Neither metric synchronises with the host per step: nan_strategy="disable" skips the
        # NaN scan (a NaN must surface, not be dropped; on_train_epoch_end checks once per epoch),
        # validate_args=False skips the label checks, and "micro" accuracy is two sums.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_accuracy = MulticlassAccuracy(CLASSES, average="micro", validate_args=False)
        self.eval_accuracy = torch.nn.ModuleDict(
            {name: MulticlassAccuracy(CLASSES, average="micro", validate_args=False) for name in eval_split_names}
        )
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
        # No weight: with nan_strategy="disable" torchmetrics (1.9) replaces any weight by 1, so
        # train_loss has always been the mean of the batch means; passing len(labels) only
        # cost a host-to-device copy of that number every step.
        self.train_loss.update(per_sample.detach().mean())
        self.train_accuracy.update(self.model.predict(out.detach()), labels)
        return loss

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
        self.eval_accuracy[self.eval_split_names[dataloader_idx]].update(self.model.predict(self.model(images)), labels)

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
