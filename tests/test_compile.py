"""`trainer.compile`: off on a CPU unless forced; forced, it trains (compiled, or eagerly after one warning)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import lenet5.compile as compile_module
from lenet5.compile import compile_mode
from lenet5.config import ConfigError
from lenet5.jobs import prepare

from .helpers import compose

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

TINY = ["experiment=modern", "data.train_subset=64", "data.test_subset=64", "data.batch_size=32", "trainer.max_epochs=1"]


def fit(*overrides: str):
    """A tiny fit on the CPU; the trained module."""
    datamodule, module = prepare(compose(*TINY, *overrides), check_tracking=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, deterministic=True)
    trainer.fit(module, datamodule=datamodule)
    return module


def test_auto_compiles_on_a_gpu_only():
    assert compile_mode("auto", torch.device("cpu")) is None
    assert compile_mode("auto", torch.device("cuda")) == "reduce-overhead"
    assert compile_mode("true", torch.device("cpu")) == "default"
    assert compile_mode("false", torch.device("cuda")) is None
    assert fit().train_forward is None  # auto, on this CPU: the eager network


def test_a_bad_choice_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError, match=r"^trainer.compile=maybe is not a choice; valid choices: auto, true, false$"):
        prepare(compose("trainer.compile=maybe"), check_data=False, check_tracking=False)


def test_a_compiler_that_fails_leaves_one_warning_and_eager_training(monkeypatch):
    def failing_compile(fn, mode):
        def compiled(x):
            raise torch._dynamo.exc.TorchDynamoException("no working C++ compiler\nmore detail")

        return compiled

    monkeypatch.setattr(compile_module.torch, "compile", failing_compile)
    with pytest.warns(UserWarning, match=r"trainer.compile: torch.compile \(mode default\) failed, training eagerly: no working C\+\+ compiler$"):
        forced = fit("trainer.compile=true")
    eager = fit("trainer.compile=false")
    assert forced.train_forward.compiled is None
    for (name, a), b in zip(forced.model.named_parameters(), eager.model.parameters()):
        assert torch.equal(a, b), name  # the same eager steps, to the bit


@pytest.mark.slow
def test_forcing_compile_on_a_cpu_trains_compiled():
    """Inductor on this CPU (a C++ compiler is needed; a minute of compiling at most)."""
    forced = fit("trainer.compile=true")
    eager = fit("trainer.compile=false")
    assert forced.train_forward is not None and forced.train_forward.compiled is not None  # no fallback happened
    for (name, a), b in zip(forced.model.named_parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)  # fused kernels round differently


@pytest.mark.slow
def test_a_forced_compile_compiles_the_whole_step_of_a_stack():
    """In an SDLM stack, the K models' forward and gradient are one compiled function, their
    per-batch curvature pass another, and training agrees with the eager stack."""
    from lenet5.stacked import StackedTraining

    def stack(setting: str) -> StackedTraining:
        paper = ["experiment=paper", "data.train_subset=32", "data.test_subset=64", "data.batch_size=4", "trainer.max_epochs=1"]
        cfgs = [compose(*paper, f"seed={seed}", f"trainer.compile={setting}") for seed in (0, 1)]
        prepared = [prepare(c, check_tracking=False) for c in cfgs]
        prepared[0][0].setup()
        training = StackedTraining([m for _, m in prepared], prepared[0][0], torch.device("cpu"))
        if setting == "true":  # count the calls that reach the compiled functions
            for fn in (training.gradients, training.batch_curvature):
                fn.compiled = counted(fn.compiled)
        list(training.passes())
        return training

    calls = []

    def counted(fn):
        def call(*args):
            calls.append(fn)
            return fn(*args)

        return call

    compiled, eager = stack("true"), stack("false")
    assert compiled.gradients.compiled is not None and compiled.batch_curvature.compiled is not None  # compiled, no fallback
    assert len(calls) == 2 * 8  # 32 images in batches of 4: each of the 8 steps ran both compiled functions
    assert not hasattr(eager.gradients, "compiled") and not hasattr(eager.batch_curvature, "compiled")  # false: plain vmapped functions
    for name, p in eager.params.items():
        torch.testing.assert_close(compiled.params[name], p, rtol=1e-4, atol=1e-5, msg=name)
