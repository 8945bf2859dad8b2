"""The LightningModule that trains any LeNet-5 variant.

Logged once per epoch, with MLflow step = epochs completed (1, 2, ...): `train_loss`,
`train_error` (running error over the epoch, %), `test_error` and `val_error` (%, after
the epoch), `lr` (the rate that epoch trained with).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .compile import CompiledOrEager, compile_mode, compile_setting
from .config import select
from .losses import make_loss
from .model.lenet5 import CLASSES, LeNet5
from .optim import make_optimizer, make_schedule
from .resume import rng_state, set_rng_state


class LeNet5Module(L.LightningModule):
    """`cfg` is the whole composed config; `input_size` comes from the data preprocessing;
    `eval_split_names` names the validation loaders in order (e.g. ["test", "val"])."""

    def __init__(self, cfg: Any, input_size: int, eval_split_names: list[str]):
        super().__init__()
        self.cfg = cfg
        self.model = LeNet5(cfg.model, input_size)
        self.loss_fn = make_loss(select(cfg, "loss.name"), self.model.head_kind, cfg.loss.j)
        self.sum_loss = select(cfg, "loss.reduction") == "sum"
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

    def on_fit_start(self) -> None:
        mode = compile_mode(compile_setting(self.cfg), self.device)
        self.train_forward = CompiledOrEager(self.model, mode) if mode is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        out = (self.train_forward or self.model)(images)
        per_sample = self.loss_fn(out, labels)
        loss = per_sample.sum() if self.sum_loss else per_sample.mean()
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
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} in epoch {self.current_epoch + 1}")
        self.log("train_loss", loss)
        self.log("train_error", 100.0 * (1.0 - self.train_accuracy.compute()))
        self.log("lr", self.epoch_lr)
        self.log("step", float(self.current_epoch + 1))  # Lightning sends this as the MLflow step
        self.train_loss.reset()
        self.train_accuracy.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        self.eval_accuracy[self.eval_split_names[dataloader_idx]].update(self.model.predict(self.model(images)), labels)

    def on_validation_epoch_end(self) -> None:
        for name, accuracy in self.eval_accuracy.items():
            self.log(f"{name}_error", 100.0 * (1.0 - accuracy.compute()), add_dataloader_idx=False)
            accuracy.reset()
        self.log("step", float(self.current_epoch + 1))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        set_rng_state(checkpoint["rng"])

    def configure_optimizers(self):
        optimizer = make_optimizer(self.model.parameters(), self.cfg.optim, self.cfg.data.batch_size)
        scheduler = make_schedule(optimizer, self.cfg.optim, self.cfg.trainer.max_epochs)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
