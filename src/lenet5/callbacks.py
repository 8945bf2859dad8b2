"""Lightning callbacks specific to this suite."""

from __future__ import annotations

import time
from typing import Iterable

import lightning as L
import matplotlib.pyplot as plt
import torch

from .figures import sdlm_steps_figure
from .sdlm import PAPER_PASS1_STEPS, SDLM, gauss_newton_diagonal


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
        if pl_module.device.type == "cuda":
            # Once per epoch: the GPU runs behind the host, so the last batch "ends" when its
            # kernels are queued; wait for them so the time is the GPU's.
            torch.cuda.synchronize(pl_module.device)
            self.finished = time.perf_counter()
        seconds = max(self.finished - self.started, 1e-9)
        pl_module.log("epoch_time_s", seconds)
        pl_module.log("train_images_per_s", self.images / seconds)


class SDLMCurvature(L.Callback):
    """Keeps SDLM's h_kk current and reports the steps it gives.

    h_kk is re-estimated before each pass on `samples` training patterns drawn at random
    (seeded) from the training split, as the paper does (Appendix C); with `every` > 0 also
    after every `every` patterns within the pass (EBLearn); with `gamma` > 0 each batch's own
    curvature is blended in before its update (SN2.8's running average; a batch of B patterns
    blends with weight 1 - (1 - gamma)^B, B pattern-by-pattern blends taken at one point).

    Telemetry, per pass (MLflow step = pass), once h_kk is estimated at its start:
    `sdlm/step_{min,median,max}/<layer>` of the per-pattern effective step eta/(mu + h_kk)
    and `sdlm/h_below_mu_pct/<layer>` (share of h_kk below mu, %), for each layer and `all`;
    a histogram of the steps per layer for pass 1 and the last pass (`sdlm_steps_pass<k>.png`).
    """

    def __init__(self, samples: int, seed: int, every: int = 0, gamma: float = 0.0):
        self.samples, self.every, self.gamma = samples, every, gamma
        self.generator = torch.Generator().manual_seed(seed + 1)  # not the shuffling stream
        self.patterns_since_estimate = 0

    def _estimate(self, trainer: L.Trainer, pl_module, images: torch.Tensor, weight: float = 1.0) -> None:
        diagonal = gauss_newton_diagonal(pl_module.model, images)
        by_param = {param: diagonal[name] for name, param in pl_module.model.named_parameters() if name in diagonal}
        trainer.optimizers[0].set_curvature(by_param, weight)

    def _estimate_on_sample(self, trainer: L.Trainer, pl_module) -> None:
        images, _ = trainer.datamodule.splits["train"]
        index = torch.randperm(len(images), generator=self.generator)[: self.samples].to(images.device)
        self._estimate(trainer, pl_module, images[index])
        self.patterns_since_estimate = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._estimate_on_sample(trainer, pl_module)
        pass_number = pl_module.passes_done + 1
        steps = layer_steps(pl_module.model, trainer.optimizers[0])
        if trainer.logger is not None:
            trainer.logger.log_metrics(step_telemetry(steps), step=pass_number)
            if pass_number in (1, pl_module.config.trainer.max_epochs):
                figure = sdlm_steps_figure({layer: s for layer, (s, _) in steps.items()}, pass_number, PAPER_PASS1_STEPS)
                trainer.logger.experiment.log_figure(trainer.logger.run_id, figure, f"sdlm_steps_pass{pass_number:02d}.png")
                plt.close(figure)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        images, _ = batch
        if self.every and self.patterns_since_estimate >= self.every:
            self._estimate_on_sample(trainer, pl_module)
        if self.gamma > 0:
            self._estimate(trainer, pl_module, images, weight=1 - (1 - self.gamma) ** len(images))
        self.patterns_since_estimate += len(images)


def layer_steps(model: torch.nn.Module, optimizer: SDLM) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer ("c1", "s2", ...): (effective steps eta/(mu + h_kk), h_kk below mu (bool))},
    each flattened over the layer's weights and biases."""
    steps, mu = optimizer.effective_steps(), optimizer.param_groups[0]["mu"]
    return group_by_layer((name, steps[param], optimizer.curvature(param) < mu) for name, param in model.named_parameters())


def group_by_layer(named: Iterable[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(parameter name "c1.weight", its steps, its h_kk < mu), in the model's order ->
    {layer "c1": (steps, below mu)}, each flattened and concatenated over the layer's parameters."""
    by_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, step, below_mu in named:
        by_layer.setdefault(name.split(".")[0], []).append((step.flatten(), below_mu.flatten()))
    return {layer: (torch.cat([s for s, _ in pairs]), torch.cat([b for _, b in pairs])) for layer, pairs in by_layer.items()}


def step_telemetry(steps: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """The metrics of `layer_steps`' output: min/median/max step and % of h_kk below mu, per layer and `all`."""
    everything = (torch.cat([s for s, _ in steps.values()]), torch.cat([b for _, b in steps.values()]))
    metrics = {}
    for layer, (step, below) in {**steps, "all": everything}.items():
        metrics[f"sdlm/step_min/{layer}"] = step.min().item()
        metrics[f"sdlm/step_median/{layer}"] = step.median().item()
        metrics[f"sdlm/step_max/{layer}"] = step.max().item()
        metrics[f"sdlm/h_below_mu_pct/{layer}"] = 100.0 * below.float().mean().item()
    return metrics
