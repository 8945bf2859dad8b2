"""Lightning callbacks specific to this suite."""

from __future__ import annotations

import time

import lightning as L
import torch

from .sdlm import gauss_newton_diagonal


class EpochThroughput(L.Callback):
    """Logs `epoch_time_s` (first training batch start to last training batch end, so the
    evaluation after the epoch is not counted) and `train_images_per_s` each epoch."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.finished = self.started
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[1])
        self.finished = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = max(self.finished - self.started, 1e-9)
        pl_module.log("epoch_time_s", seconds)
        pl_module.log("train_images_per_s", self.images / seconds)


class SDLMCurvature(L.Callback):
    """Before each pass, re-estimate SDLM's h_kk on `samples` training patterns drawn at
    random (seeded) from the training split, as the paper does (Appendix C)."""

    def __init__(self, samples: int, seed: int):
        self.samples = samples
        self.generator = torch.Generator().manual_seed(seed + 1)  # not the shuffling stream

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        images, _ = trainer.datamodule.splits["train"]
        index = torch.randperm(len(images), generator=self.generator)[: self.samples].to(images.device)
        diagonal = gauss_newton_diagonal(pl_module.model, images[index])
        by_param = {param: diagonal[name] for name, param in pl_module.model.named_parameters() if name in diagonal}
        trainer.optimizers[0].set_curvature(by_param)
