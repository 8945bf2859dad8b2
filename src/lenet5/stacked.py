"""K LeNet-5s of one architecture trained side by side as one stacked model, in one process.

Each model keeps everything it would have alone: its initial weights (built by its own
`LeNet5Module` after `seed_everything(seed)`, as `train.prepare` builds them), its data order
(its own `TensorBatches` generator, seeded by its seed), its rate and schedule (its own
torch scheduler, stepped once a pass), and for SDLM its h_kk, re-estimated before each pass
on its own seeded sample of 500 patterns (`SDLMCurvature`'s generator, seed + 1) and blended
with its own batch's curvature. What the models share is the work: every step is one
forward and one backward pass over a (K, B, 1, S, S) batch (`torch.func.vmap` of
`grad_and_value` of `functional_call`, over the weights stacked by `stack_module_state`;
with `trainer.compile`, that one function compiled), one curvature pass for all K
(`gauss_newton_diagonal` is a pure function of the weights), and one optimizer kernel per
parameter tensor (stacked_optim.py).

Equality with training alone: to float32 rounding, not bit for bit. vmap lowers K
convolutions to one grouped convolution and K linear layers to one batched matrix product,
whose reductions add in another order (about 1e-7 relative per step, tests/test_stacked.py),
so weights after a few hundred steps agree to about 1e-5 and the logged error rates to the
image, barring a prediction that sat on a tie.

Why a hand loop rather than Lightning: Lightning's loop serves one batch and steps one
optimizer per step; a stack needs K batches from K generators per step, K schedules, and
per-model bookkeeping of every metric. The loop is the Lightning module's hooks, in order:
curvature at the start of a pass, per batch blend, step, per-epoch scheduler, evaluation.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from .checkpoint import Checkpoint
from .compile import CompiledOrEager, compile_mode, compile_setting
from .config import Config, OptimName
from .data import MNISTDataModule
from .losses import reduce_loss
from .module import LeNet5Module
from .optim import make_optimizer, make_schedule
from .sdlm import gauss_newton_diagonal
from .stacked_optim import StackedOptimizer


def _float32(value: float) -> float:
    """`value` as Lightning's `self.log` records a Python number: rounded to a float32 tensor."""
    return torch.tensor(value, dtype=torch.float32).item()


@dataclass
class PassResult:
    """What pass `number` (1-based) gave each model: `metrics[k]` ({name: value}, the names a
    single run logs per pass) and, for SDLM, `sdlm_steps[k]` ({layer: (eta/(mu + h_kk)
    flattened, h_kk < mu flattened)}, as `callbacks.layer_steps` gives them, from the start of
    the pass)."""

    number: int
    metrics: list[dict[str, float]]
    sdlm_steps: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None


@dataclass
class _PassTotals:
    """Running sums of a pass, per model, on the training device."""

    loss_sum: torch.Tensor  # (K,) float32: sum of the batch-mean losses
    correct: torch.Tensor  # (K,) int64: training images classified right
    batches: int = 0
    patterns: int = 0  # per model


@dataclass
class _Member:
    """One model's own state besides its weights."""

    config: Config
    batches: Any  # TensorBatches or DistortedBatches, seeded by the model's seed
    schedule_optimizer: torch.optim.Optimizer  # holds the model's current rate; never steps a weight
    scheduler: Any
    curvature_generator: torch.Generator | None = None
    patterns_since_estimate: int = 0


class StackedTraining:
    """Trains the K models `modules` (each built by `jobs.prepare` from its job's config, which
    it holds as `module.config`) on `datamodule`'s splits (set up on `device`), K jobs that
    `grouping.stack_key` finds equal.

    `passes()` runs the training and yields a `PassResult` after each pass; afterwards
    `params` (name -> (K, ...)) hold the trained weights and `write_back()` copies them into
    the modules, so everything written for a single run can be written for each.
    """

    def __init__(self, modules: list[LeNet5Module], datamodule: MNISTDataModule, device: torch.device):
        self.modules, self.datamodule, self.device = modules, datamodule, device
        configs = [module.config for module in modules]
        # The architecture, run with each model's weights in turn: its own weights are never used.
        self.base = copy.deepcopy(modules[0].model).to(device)
        config = configs[0]  # all but seeds and optimizer numbers are equal in a stack (grouping.py)
        self.loss_fn, self.reduction = modules[0].loss_fn, config.loss.reduction
        self.max_epochs, self.batch_size = config.trainer.max_epochs, config.data.batch_size
        self.is_sdlm = config.optim.name == OptimName.sdlm
        if self.is_sdlm:
            self.curvature_every, self.curvature_gamma = config.optim.curvature_every, config.optim.curvature_gamma
        stacked, _ = stack_module_state([m.model for m in modules])
        self.params = {name: p.detach().to(device) for name, p in stacked.items()}
        # Every model's gradient and loss in one call; with trainer.compile, compiled whole
        # (on a GPU as CUDA graphs: one replay for the K forward and backward passes).
        self.gradients = vmap(grad_and_value(self._loss, has_aux=True))
        # SDLM's h_kk of every model on its own images (params, images (K, N, 1, S, S)) ->
        # name -> (K, ...): on `curvature_samples` patterns before each pass (eager: once a
        # pass, not worth compiling for a second input shape), and, as `batch_curvature`, on
        # each batch before its update (curvature_gamma > 0).
        self.curvature_pass = vmap(lambda p, x: gauss_newton_diagonal(self.base, x, p))
        self.batch_curvature = self.curvature_pass
        mode = compile_mode(compile_setting(config), device)
        if mode is not None:
            self.gradients = CompiledOrEager(self.gradients, mode)
            if self.is_sdlm:
                # Compiled too: in eager mode this pass costs more than the gradient (it runs the
                # network forward, then the squared surrogate forward and back), and compiling
                # both makes an SDLM stack 1.8x as fast on a CPU (docs/performance.md).
                self.batch_curvature = CompiledOrEager(self.batch_curvature, mode)
        self.optimizer = StackedOptimizer(self.params, [c.optim for c in configs], self.batch_size)
        self.completed = 0  # passes done by every model; `load_member_state` may move it on
        self.members = []
        for c in configs:
            holder = torch.nn.Parameter(torch.zeros(1))
            schedule_optimizer = make_optimizer([holder], c.optim, c.data.batch_size)
            member = _Member(c, datamodule.make_train_batches(seed=c.seed), schedule_optimizer, make_schedule(schedule_optimizer, c.optim, c.trainer.max_epochs))
            if self.is_sdlm:
                member.curvature_generator = torch.Generator().manual_seed(c.seed + 1)  # as SDLMCurvature
            self.members.append(member)

    # --- one model, as a function of its weights (vmap runs it over the stack) ------------

    def _loss(self, params: dict[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor):
        """images (B, 1, S, S), labels (B,) -> (loss, (per-sample loss (B,), head output (B, 10)))."""
        out = functional_call(self.base, params, (images,))
        per_sample = self.loss_fn(out, labels)
        loss = reduce_loss(per_sample, self.reduction)
        return loss, (per_sample.detach(), out.detach())

    def _predict(self, out: torch.Tensor) -> torch.Tensor:
        """Head outputs (K, N, 10) -> predicted classes (K, N)."""
        return self.base.predict(out.flatten(0, 1)).view(out.shape[:2])

    # --- SDLM curvature --------------------------------------------------------------------

    def _estimate_on_samples(self) -> None:
        train_images, _ = self.datamodule.splits["train"]
        samples = []
        for member in self.members:
            index = torch.randperm(len(train_images), generator=member.curvature_generator)[: member.config.optim.curvature_samples]
            samples.append(train_images[index.to(train_images.device)])
            member.patterns_since_estimate = 0
        self.optimizer.set_curvature(self.curvature_pass(self.params, torch.stack(samples)))

    def _layer_steps(self, lrs: list[float]) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Per model, `callbacks.layer_steps`' {layer: (steps, h_kk < mu)}."""
        from .callbacks import group_by_layer

        named = []
        for name, p in self.params.items():
            steps = self.optimizer.effective_steps(lrs, name, p)
            below = self.optimizer.curvature.get(name, torch.zeros_like(p)) < self.optimizer.setting("mu", p)
            named.append((name, steps, below))
        return [group_by_layer((name, s[k], b[k]) for name, s, b in named) for k in range(len(self.members))]

    # --- the loop --------------------------------------------------------------------------

    def _step(self, batches: tuple[tuple[torch.Tensor, torch.Tensor], ...], lrs: list[float], totals: _PassTotals) -> None:
        """One update of every model on its own batch (`batches[k]`: (images (B, 1, S, S), labels (B,))).

        Reads nothing back to the host: the pass's totals stay on the device until its end.
        """
        images = torch.stack([b[0] for b in batches])  # (K, B, 1, S, S)
        labels = torch.stack([b[1] for b in batches])  # (K, B)
        size = labels.shape[1]
        if self.is_sdlm:
            if self.curvature_every and self.members[0].patterns_since_estimate >= self.curvature_every:
                self._estimate_on_samples()
            if self.curvature_gamma > 0:
                self.optimizer.set_curvature(self.batch_curvature(self.params, images), weight=1 - (1 - self.curvature_gamma) ** size)
            for member in self.members:
                member.patterns_since_estimate += size
        grads, (_, (per_sample, out)) = self.gradients(self.params, images, labels)
        self.optimizer.step(self.params, grads, lrs)
        # Each batch's mean counts once, whatever its size, as in module.py's MeanOfBatches.
        totals.loss_sum += per_sample.mean(1)
        totals.correct += (self._predict(out) == labels).sum(1)
        totals.batches += 1
        totals.patterns += size

    def passes(self) -> Iterator[PassResult]:
        """Run the passes after `completed`, yielding each one's result. While the caller holds a
        result, every model's state is that of "pass `number` done, nothing of the next begun",
        which is what `member_state` saves."""
        for number in range(self.completed + 1, self.max_epochs + 1):
            lrs = [m.schedule_optimizer.param_groups[0]["lr"] for m in self.members]
            steps = None
            if self.is_sdlm:
                self._estimate_on_samples()
                steps = self._layer_steps(lrs)
            k = len(self.members)
            totals = _PassTotals(torch.zeros(k, device=self.device), torch.zeros(k, dtype=torch.long, device=self.device))
            started = time.perf_counter()
            for batches in zip(*(m.batches for m in self.members)):
                self._step(batches, lrs, totals)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # the pass's time is the GPU's, not the queue's
            seconds = max(time.perf_counter() - started, 1e-9)
            for member in self.members:
                if member.scheduler is not None:
                    # The holder has no gradient, so this step moves nothing; it keeps torch from
                    # warning that the scheduler steps an optimizer that never stepped.
                    member.schedule_optimizer.step()
                    member.scheduler.step()
            seen = totals.patterns
            train_loss = (totals.loss_sum / totals.batches).tolist()
            train_error = (100.0 * (1.0 - totals.correct.float() / seen)).tolist()
            evaluation = self.evaluate()
            metrics = [
                {
                    "train_loss": train_loss[i], "train_error": train_error[i], "lr": _float32(lrs[i]),
                    **{f"{split}_error": errors[i] for split, errors in evaluation.items()},
                    "epoch_time_s": _float32(seconds), "train_images_per_s": _float32(seen / seconds),
                }  # fmt: skip
                for i in range(k)
            ]
            self.completed = number
            yield PassResult(number, metrics, steps)

    @torch.no_grad()
    def evaluate(self) -> dict[str, list[float]]:
        """{split: error (%) of each model} on every evaluation split (`test`, `val`)."""
        errors = {}
        for split in self.datamodule.eval_split_names:
            correct, total = torch.zeros(len(self.members), dtype=torch.long, device=self.device), 0
            for images, labels in self.datamodule.eval_batches(split):
                out = vmap(lambda p, x: functional_call(self.base, p, (x,)), in_dims=(0, None))(self.params, images)
                correct += (self._predict(out) == labels).sum(1)
                total += len(labels)
            errors[split] = (100.0 * (1.0 - correct.float() / total)).tolist()
        return errors

    # --- one model's state, saved after a pass and loaded to resume (stacked_train.py) --------

    def member_state(self, k: int) -> Checkpoint:
        """Model k's checkpoint, in checkpoint.py's format (the one a single run saves): on the
        CPU, with nothing of the others, so it loads into any stack of jobs at the same pass, or
        into Lightning's loop alone."""
        member = self.members[k]
        own = lambda tensors: {name: t[k].detach().cpu().clone() for name, t in tensors.items()}  # noqa: E731
        return {
            "pass": self.completed,
            "weights": own(self.params),
            "optimizer_steps": self.optimizer.steps,
            "optimizer_state": {name: own(state) for name, state in self.optimizer.state.items() if state},
            "curvature": own(self.optimizer.curvature),
            "schedule_optimizer": member.schedule_optimizer.state_dict(),
            "schedule": member.scheduler.state_dict() if member.scheduler is not None else None,
            "order_generator": member.batches.generator.get_state(),
            "curvature_generator": member.curvature_generator.get_state() if member.curvature_generator is not None else None,
            "patterns_since_estimate": member.patterns_since_estimate,
        }

    @torch.no_grad()
    def load_member_states(self, states: list[Checkpoint]) -> None:
        """Continue from checkpoints (checkpoint.py; saved by a stack or by a single run), one per
        model in order, all at the same pass (one stack steps all its models together)."""
        passes = {state["pass"] for state in states}
        steps = {state["optimizer_steps"] for state in states}
        if len(passes) != 1 or len(steps) != 1 or len(states) != len(self.members):
            raise ValueError(f"a stack resumes {len(self.members)} models at one pass, got passes {sorted(passes)}, updates {sorted(steps)}")
        self.completed, self.optimizer.steps = passes.pop(), steps.pop()
        stacked = lambda key, name: torch.stack([state[key][name] for state in states]).to(self.device)  # noqa: E731
        for name, p in self.params.items():
            p.copy_(stacked("weights", name))
        for name in states[0]["optimizer_state"]:
            self.optimizer.state[name] = {key: torch.stack([s["optimizer_state"][name][key] for s in states]).to(self.device) for key in states[0]["optimizer_state"][name]}
        self.optimizer.curvature = {name: stacked("curvature", name) for name in states[0]["curvature"]}
        for member, state in zip(self.members, states):
            member.schedule_optimizer.load_state_dict(state["schedule_optimizer"])
            if member.scheduler is not None:
                member.scheduler.load_state_dict(state["schedule"])
            member.batches.generator.set_state(state["order_generator"])
            if member.curvature_generator is not None:
                member.curvature_generator.set_state(state["curvature_generator"])
            member.patterns_since_estimate = state["patterns_since_estimate"]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy model k's trained weights into `modules[k]` (moved to the training device)."""
        for k, module in enumerate(self.modules):
            module.to(self.device)
            for name, p in module.model.named_parameters():
                p.copy_(self.params[name][k])
