"""SDLM (paper, Appendix C): the h_kk estimate against a brute-force Gauss-Newton diagonal, the
update rule and the per-pass schedule."""

from __future__ import annotations

import mlflow
import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn
from torch.func import functional_call, jacrev, stack_module_state, vmap
from torch.nn.utils.stateless import _reparametrize_module

from lenet5.config import as_config
from lenet5.model.lenet5 import LeNet5
from lenet5.optim import make_optimizer, make_schedule
from lenet5.sdlm import SDLM, gauss_newton_diagonal, paper_eta
from lenet5.tracking import get_or_create_experiment
from lenet5.jobs import prepare, train
from lenet5.train import make_trainer

from .helpers import compose, small_overrides


def f6_state(model: LeNet5, params: dict, image: torch.Tensor) -> torch.Tensor:
    """F6's output (84,) for one image, as a function of the parameters (for jacrev)."""
    with _reparametrize_module(model, params):
        x = image
        for layer, squash in model.stages()[:-1]:
            x = layer(x.flatten(1) if layer is model.f6 else x)
            x = model.f(x) if squash else x
    return x[0]


@pytest.fixture(scope="module")
def rule_and_exact():
    """h_kk by the paper's rule and the exact Gauss-Newton diagonal of y_D on 3 random images.

    Exact: diag(J^T (d2E/dx^2) J) = 2 * sum_j J_jk^2 with J the Jacobian of the 84 F6 states
    with respect to every parameter, computed by autograd, one image at a time.
    """
    torch.manual_seed(0)
    # The printed init: how closely the rule tracks the exact diagonal below C5 depends on the
    # weights (with the Lush init, C1's correlation on these random images is about 0.5).
    model = LeNet5(as_config(compose("model.init=lecun")).model).double()
    images = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    params = {name: p.detach() for name, p in model.named_parameters()}
    exact = {name: torch.zeros_like(p) for name, p in params.items()}
    for image in images:
        jacobian = jacrev(lambda p: f6_state(model, p, image[None]))(params)
        for name, j in jacobian.items():
            exact[name] += 2 * j.reshape(84, -1).square().sum(0).reshape(params[name].shape) / len(images)
    return gauss_newton_diagonal(model, images), exact


def test_rule_is_exact_where_no_weight_is_shared(rule_and_exact):
    """F6 and C5 (1x1 output) weights each reach the output through one unit: no cross terms to drop."""
    rule, exact = rule_and_exact
    for name in ("f6.weight", "f6.bias", "c5.weight", "c5.bias"):
        torch.testing.assert_close(rule[name], exact[name], rtol=1e-9, atol=1e-12)


def test_rule_tracks_the_exact_diagonal_where_weights_are_shared(rule_and_exact):
    """Below C5, shared weights have cross terms between positions that the rule drops: the
    estimate is positive, of the right order and strongly correlated with the exact value."""
    rule, exact = rule_and_exact
    assert set(rule) == set(exact)
    for name in ("c1.weight", "c3.weight", "s2.coefficient", "s4.coefficient"):
        a, b = rule[name].flatten(), exact[name].flatten()
        assert (a >= 0).all()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9, name
        assert 0.1 < (a.sum() / b.sum()).item() < 10, name


def test_rule_against_a_direct_computation_through_f6_and_c5():
    """The rule written out by hand for the top two layers."""
    torch.manual_seed(1)
    model = LeNet5(as_config(compose()).model).double()
    images = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    x = images
    for layer, squash in model.convolutional_stages()[:-1]:
        x = model.f(layer(x)) if squash else layer(x)
    s4 = x.flatten(1)  # (4, 400): C5 sees all of S4
    a5 = s4 @ model.c5.weight.flatten(1).T + model.c5.bias  # (4, 120)
    c5_state = model.f(a5)
    a6 = c5_state @ model.f6.weight.T + model.f6.bias  # (4, 84)
    slope = lambda a: 1.7159 * (2 / 3) * (1 - torch.tanh(2 * a / 3) ** 2)  # noqa: E731
    d2_a6 = 2 * slope(a6) ** 2  # (4, 84)
    d2_c5_state = d2_a6 @ model.f6.weight.square()  # (4, 120)
    d2_a5 = slope(a5) ** 2 * d2_c5_state
    expected_f6 = (d2_a6.T @ c5_state.square()) / 4
    expected_c5 = (d2_a5.T @ s4.square()).view_as(model.c5.weight) / 4
    rule = gauss_newton_diagonal(model, images)
    torch.testing.assert_close(rule["f6.weight"], expected_f6)
    torch.testing.assert_close(rule["c5.weight"], expected_c5)


def layer_by_layer_rule(model: LeNet5, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The paper's rule as its three equations read, one layer at a time from the top: f'^2 by
    autograd, then each layer's backward pass with squared weights on squared inputs. Slow
    (two autograd calls a layer), plain to check; the suite runs one fused backward pass."""
    records, x = [], images
    for layer, squash in model.stages():
        x = x.flatten(1) if layer is model.f6 else x
        pre = layer(x)
        records.append((layer, x, pre, squash))
        x = model.f(pre) if squash else pre
    if model.head_kind == "rbf":
        curvature, records = torch.full_like(records[-1][1], 2.0), records[:-1]
    else:
        p = torch.softmax(records[-1][2], dim=1)
        curvature = p * (1 - p)
    names = {module: prefix for prefix, module in model.named_modules()}
    rule = {}
    for index in reversed(range(len(records))):
        layer, layer_input, pre, squash = records[index]
        if squash:
            a = pre.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(model.f(a).sum(), a)
            curvature = curvature * slope.square()
        x_in = layer_input.detach().requires_grad_(True)
        if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            (curvature,) = torch.autograd.grad(layer(x_in), x_in, grad_outputs=curvature)
            curvature = curvature / 4 if isinstance(layer, nn.AvgPool2d) else curvature
        else:
            squared = {n: w.detach().square().requires_grad_(True) for n, w in layer.named_parameters()}
            x_squared = x_in.detach().square().requires_grad_(True)
            out = functional_call(layer, squared, (x_squared,))
            curvature, *grads = torch.autograd.grad(out, [x_squared, *squared.values()], grad_outputs=curvature)
            rule.update({f"{names[layer]}.{n}": g / len(images) for n, g in zip(squared, grads)})
        if layer is model.f6:
            curvature = curvature.view(records[index - 1][2].shape)
    return rule


VARIANTS = [
    [],
    ["model.pool=max"],
    ["model.pool=avg"],
    ["model.head=softmax", "loss=cross_entropy"],
    ["model.activation=relu"],
    ["model.activation=sigmoid", "model.c3=full"],
    ["model.activation_at=after_pool", "model.pool=max"],
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: " ".join(o) or "paper")
def test_fused_curvature_pass_equals_the_layer_by_layer_rule(overrides):
    """Every pooling, squashing and head the suite offers, on real-looking inputs."""
    torch.manual_seed(2)
    model = LeNet5(as_config(compose(*overrides)).model).double()
    images = torch.randn(5, 1, 32, 32, dtype=torch.float64)
    fused, reference = gauss_newton_diagonal(model, images), layer_by_layer_rule(model, images)
    assert set(fused) == set(reference) == {n for n, _ in model.named_parameters()}
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-10, atol=1e-14, msg=name)


def test_curvature_pass_runs_over_a_stack_of_models():
    """With the weights passed in, vmap runs it over K models at once, each as if alone."""
    torch.manual_seed(3)
    models = [LeNet5(as_config(compose()).model) for _ in range(3)]
    images = torch.randn(4, 1, 32, 32)
    stacked, _ = stack_module_state(models)
    together = vmap(lambda params: gauss_newton_diagonal(models[0], images, params))(stacked)
    for k, model in enumerate(models):
        alone = gauss_newton_diagonal(model, images)
        for name in alone:
            torch.testing.assert_close(together[name][k], alone[name], msg=name)


def test_sdlm_step_is_eta_over_mu_plus_h():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    optimizer = SDLM([w], lr=0.1, mu=0.02)
    optimizer.set_curvature({w: torch.tensor([0.0, 0.08, 1.98])})
    w.grad = torch.tensor([1.0, 1.0, -2.0])
    optimizer.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1 - 0.1 / 0.02, 2 - 0.1 / 0.1, 3 + 0.2 / 2.0]))


def test_paper_schedule_per_pass():
    assert [paper_eta(p) for p in range(1, 15)] == [5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4 + [1e-5] * 2
    cfg = compose("optim=sdlm")
    model = LeNet5(as_config(cfg).model)
    optimizer = make_optimizer(model.parameters(), as_config(cfg).optim, batch_size=1)
    schedule = make_schedule(optimizer, as_config(cfg).optim, max_epochs=20)
    seen = []
    for _ in range(14):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([paper_eta(p) for p in range(1, 15)])


def test_mini_batch_form_steps_by_batch_size_times_eta():
    """One update over B patterns with the batch-mean gradient moves each weight by the sum
    of the B per-pattern steps eta/(mu + h) * g_p taken at the same point."""
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    optimizer = make_optimizer([w], as_config(compose("optim=sdlm", "optim.mu=0.02")).optim, batch_size=16)
    optimizer.set_curvature({w: torch.tensor([0.0, 0.48])})
    per_pattern_grads = torch.randn(16, 2)
    w.grad = per_pattern_grads.mean(0)
    optimizer.step()
    expected = torch.tensor([1.0, -1.0]) - (5e-4 / (0.02 + torch.tensor([0.0, 0.48])) * per_pattern_grads).sum(0)
    torch.testing.assert_close(w.detach(), expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)  # the schedule and the log see eta


def test_curvature_blends_into_a_running_average():
    w = torch.nn.Parameter(torch.zeros(2))
    optimizer = SDLM([w], lr=0.1, mu=0.02)
    optimizer.set_curvature({w: torch.tensor([1.0, 3.0])})
    optimizer.set_curvature({w: torch.tensor([3.0, 1.0])}, weight=0.25)
    torch.testing.assert_close(optimizer.state[w]["h"], torch.tensor([1.5, 2.5]))
    optimizer.set_curvature({w: torch.tensor([7.0, 7.0])})  # weight 1: replaced, as before each pass
    torch.testing.assert_close(optimizer.state[w]["h"], torch.tensor([7.0, 7.0]))


@pytest.mark.slow
def test_quick_look_learns_where_the_printed_init_and_a_large_batch_collapse(store):
    """Why the paper preset takes the Lush init and batch 4 at the printed mu = 0.02: one pass
    over 2,000 images (a user's first quick look) learns, while the printed U(+-2.4/F) (almost
    every h_kk below mu) and 32 per-pattern steps summed at one point (with h_kk from before
    the pass, as printed) each end on one class."""
    small = small_overrides(store)  # 2,000 training images, one pass, 1,000 test images
    preset = train(compose("experiment=paper", *small))
    printed_init = train(compose("experiment=paper", "model.init=lecun", *small))
    batch_32 = train(compose("experiment=paper", "data.batch_size=32", "optim.curvature_gamma=0", *small))
    assert preset["test_error"] < 30, preset["test_error"]
    assert printed_init["test_error"] > 80, printed_init["test_error"]  # no better than guessing
    assert batch_32["test_error"] > 80, batch_32["test_error"]


def _fit(cfg, store: str):
    """Train `cfg` with the suite's own trainer into a fresh run of a real store; (trainer, module, run id)."""
    datamodule, module = prepare(cfg)
    client = mlflow.MlflowClient(store)
    run = client.create_run(get_or_create_experiment(client, "telemetry", None))
    logger = MLFlowLogger(tracking_uri=store, run_id=run.info.run_id)
    trainer = make_trainer(module, logger)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module, run.info.run_id


@pytest.mark.slow
def test_logged_effective_steps_equal_eta_over_mu_plus_h_from_the_optimizer(store):
    passes = 3
    # gamma 0: h_kk as estimated at the pass's start stays until the next pass (the running
    # average would move it after the telemetry is logged).
    cfg = compose("experiment=paper", *small_overrides(store, subset=256, passes=passes), "optim.curvature_gamma=0")
    trainer, module, run_id = _fit(cfg, store)
    client = mlflow.MlflowClient(store)
    # After the last pass the optimizer still holds the h_kk estimated at its start; the
    # scheduler has moved on, so eta is the schedule's value for that pass.
    optimizer = trainer.optimizers[0]
    eta, mu = paper_eta(passes) * cfg.optim.lr / paper_eta(1), optimizer.param_groups[0]["mu"]
    by_layer: dict[str, list[torch.Tensor]] = {}
    for name, param in module.model.named_parameters():
        by_layer.setdefault(name.split(".")[0], []).append(optimizer.state[param]["h"].flatten())
    assert set(by_layer) == {"c1", "s2", "c3", "s4", "c5", "f6"}
    for layer, hs in {**by_layer, "all": [h for hs in by_layer.values() for h in hs]}.items():
        h = torch.cat(hs)
        steps = eta / (mu + h)
        logged = {
            stat: {m.step: m.value for m in client.get_metric_history(run_id, f"sdlm/{stat}/{layer}")}
            for stat in ("step_min", "step_median", "step_max", "h_below_mu_pct")
        }
        assert all(sorted(history) == list(range(1, passes + 1)) for history in logged.values()), layer
        assert logged["step_min"][passes] == pytest.approx(steps.min().item(), rel=1e-6), layer
        assert logged["step_median"][passes] == pytest.approx(steps.median().item(), rel=1e-6), layer
        assert logged["step_max"][passes] == pytest.approx(steps.max().item(), rel=1e-6), layer
        assert logged["h_below_mu_pct"][passes] == pytest.approx(100 * (h < mu).float().mean().item()), layer
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"sdlm_steps_pass01.png", f"sdlm_steps_pass{passes:02d}.png"} <= artifacts


@pytest.mark.slow
def test_curvature_is_re_estimated_every_n_patterns_and_as_a_running_average(store, monkeypatch):
    """`optim.curvature_every=N` re-estimates on a fresh sample after every N patterns;
    `optim.curvature_gamma` blends each batch's own curvature in before its update."""
    import lenet5.callbacks as callbacks

    estimated_on: list[int] = []
    last_estimate: dict[str, torch.Tensor] = {}

    def recording(model, images):
        estimated_on.append(len(images))
        last_estimate.update(callbacks_gauss_newton(model, images))
        return last_estimate

    callbacks_gauss_newton = callbacks.gauss_newton_diagonal
    monkeypatch.setattr(callbacks, "gauss_newton_diagonal", recording)
    small = [*small_overrides(store, subset=320), "data.batch_size=32", "optim.curvature_samples=50"]
    _fit(compose("experiment=paper", *small, "optim.curvature_every=96", "optim.curvature_gamma=0"), store)
    # 10 batches of 32: before the pass, then after patterns 96, 192, 288 (batches 4, 7, 10).
    assert estimated_on == [50] * 4

    estimated_on.clear()
    trainer, module, _ = _fit(compose("experiment=paper", *small, "optim.curvature_gamma=1.0"), store)
    assert estimated_on == [50] + [32] * 10
    # gamma = 1: h is exactly the last batch's own curvature (taken before its update).
    optimizer = trainer.optimizers[0]
    for name, param in module.model.named_parameters():
        torch.testing.assert_close(optimizer.state[param]["h"], last_estimate[name])
