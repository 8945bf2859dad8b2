"""Each LeNet-5 part against the paper's definition, computed independently of the code under test."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from lenet5.config import Activation, as_config
from lenet5.model.activations import make_activation, scaled_tanh, squashing_slope
from lenet5.model.c3 import C3_CONNECTION_TABLE, TableConv2d
from lenet5.model.lenet5 import LeNet5
from lenet5.model.pooling import Subsampling
from lenet5.model.rbf import RBFOutput, load_digit_bitmaps

from .helpers import SHARED_DATA, compose

REFERENCE = SHARED_DATA.parent / "reference"


def reference_table_one() -> list[tuple[int, ...]]:
    """Table I as printed in ../shared/reference/lenet5-paper.md."""
    text = (REFERENCE / "lenet5-paper.md").read_text()
    section = text.split("### Table I")[1].split("Params:")[0]
    rows = re.findall(r"^\| (\d+) \| ([\d ]+) \|$", section, flags=re.M)
    return [tuple(int(m) for m in maps.split()) for _, maps in sorted(rows, key=lambda r: int(r[0]))]


def test_c3_table_matches_the_reference():
    assert [tuple(sorted(r)) for r in C3_CONNECTION_TABLE] == [tuple(sorted(r)) for r in reference_table_one()]


def test_c3_output_maps_depend_only_on_their_table_inputs():
    layer = TableConv2d(6, C3_CONNECTION_TABLE, 5)
    base = torch.randn(1, 6, 14, 14)
    reference = layer(base)
    for s2_map in range(6):
        bumped = base.clone()
        bumped[0, s2_map] += 1.0
        changed = (layer(bumped) - reference).abs().flatten(2).amax(2)[0] > 1e-6
        expected = torch.tensor([s2_map in inputs for inputs in C3_CONNECTION_TABLE])
        assert torch.equal(changed, expected), f"S2 map {s2_map}"


def test_c3_table_stores_and_trains_exactly_the_paper_weights():
    layer = TableConv2d(6, C3_CONNECTION_TABLE, 5)
    assert sum(p.numel() for p in layer.parameters()) == 6 * (3 * 25 + 1) + 9 * (4 * 25 + 1) + (6 * 25 + 1)
    layer(torch.randn(2, 6, 14, 14)).sum().backward()
    assert layer.weight.grad.abs().flatten(1).amax(1).gt(0).all()  # every stored kernel is used
    dense = layer.dense_weight()
    for out_map, inputs in enumerate(C3_CONNECTION_TABLE):
        for in_map in range(6):
            assert bool(dense[out_map, in_map].abs().sum() > 0) == (in_map in inputs)


def test_subsampling_is_block_sum_times_coefficient_plus_bias():
    layer = Subsampling(3)
    x = torch.randn(2, 3, 8, 8)
    blocks = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))  # (2, 3, 4, 4)
    expected = blocks * layer.coefficient.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    assert sum(p.numel() for p in layer.parameters()) == 6


def test_rbf_output_is_squared_euclidean_distance_to_fixed_bitmaps():
    layer = RBFOutput()
    x = torch.randn(5, 84)
    torch.testing.assert_close(layer(x), torch.cdist(x, load_digit_bitmaps()) ** 2, rtol=1e-4, atol=1e-3)
    assert not any(p.requires_grad for p in layer.parameters())
    assert layer(load_digit_bitmaps()).argmin(1).tolist() == list(range(10))


def test_bitmaps_are_the_reference_transcription_and_well_separated():
    bitmaps = load_digit_bitmaps()
    assert bitmaps.shape == (10, 84) and set(bitmaps.unique().tolist()) == {-1.0, 1.0}
    text = (REFERENCE / "rbf-bitmaps-7x12.txt").read_text()
    for digit in range(10):
        rows = text.split(f"digit {digit}\n")[1].split("\n")[:12]
        expected = torch.tensor([1.0 if c == "#" else -1.0 for row in rows for c in row])
        assert torch.equal(bitmaps[digit], expected), digit
    hamming = (bitmaps.unsqueeze(0) != bitmaps.unsqueeze(1)).sum(-1)
    off_diagonal = hamming[~torch.eye(10, dtype=torch.bool)]
    assert off_diagonal.min() >= 10, "two prototypes are nearly the same bitmap"


def test_scaled_tanh_constants():
    one = torch.tensor([1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(scaled_tanh(one), one, atol=2e-4, rtol=0)
    a = torch.linspace(0.01, 3, 3000, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(scaled_tanh(a).sum(), a, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), a)
    assert abs(a[second.abs().argmax()].item() - 1.0) < 0.05  # curvature peaks at the targets


@pytest.mark.parametrize(
    "scheme,gain",
    [("lecun", None), ("lecun", 1.0), ("lecun_sqrt", None), ("lecun_sqrt", 2.4), ("truncated_normal", None)],
)
def test_initialisation_bounds(scheme, gain):
    torch.manual_seed(0)  # the lower bounds below are near-certain, not certain, for a random draw
    model = LeNet5(as_config(compose(f"model.init={scheme}", f"model.init_gain={'null' if gain is None else gain}")).model)
    v = gain or {"lecun": 2.4, "lecun_sqrt": 1.0}.get(scheme)
    bound_for = {"lecun": lambda fan_in: v / fan_in, "lecun_sqrt": lambda fan_in: v * fan_in**-0.5}.get(scheme)
    fan_ins = {"c1": 25, "c5": 400, "f6": 120}
    for name, fan_in in fan_ins.items():
        weight = getattr(model, name).weight
        if bound_for:
            bound = bound_for(fan_in)
            assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound, name
        else:
            assert weight.abs().max() <= 2.0 and weight.std() > 0.7, name
    if bound_for:
        c3 = model.c3
        for out_map, inputs in enumerate(C3_CONNECTION_TABLE):
            kernels, bound = c3.weight[c3.out_of_pair == out_map], bound_for(25 * len(inputs))
            assert 0.8 * bound < kernels.abs().max() <= bound
        assert 0.5 * bound_for(4) < model.s2.coefficient.abs().max() <= bound_for(4)


@pytest.mark.parametrize("gain", [None, 2.4])
def test_lush_initialisation(gain):
    """Lush's `forget v 2`: weights U(+-v/sqrt(F)), S coefficients exactly v/sqrt(4), biases 0."""
    torch.manual_seed(0)
    model = LeNet5(as_config(compose("model.init=lush", f"model.init_gain={'null' if gain is None else gain}")).model)
    v = gain or 1.0
    for pool in (model.s2, model.s4):
        assert (pool.coefficient == v / 2).all()
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert (param == 0).all(), name
    for name, fan_in in {"c1": 25, "c5": 400, "f6": 120}.items():
        weight = getattr(model, name).weight
        assert 0.9 * v / fan_in**0.5 < weight.abs().max() <= v / fan_in**0.5, name
    c3 = model.c3
    for out_map, inputs in enumerate(C3_CONNECTION_TABLE):
        assert c3.weight[c3.out_of_pair == out_map].abs().max() <= v / (25 * len(inputs)) ** 0.5


def test_paper_forward_shapes():
    model = LeNet5(as_config(compose()).model)
    x = torch.randn(4, 1, 32, 32)
    shapes = {}
    for name in ("c1", "s2", "c3", "s4", "c5", "f6", "output"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    model(x)
    assert shapes == {
        "c1": (4, 6, 28, 28), "s2": (4, 6, 14, 14), "c3": (4, 16, 10, 10), "s4": (4, 16, 5, 5),
        "c5": (4, 120, 1, 1), "f6": (4, 84), "output": (4, 10),
    }  # fmt: skip


def test_activation_position_around_pooling():
    """before_pool: f(conv) then pool; after_pool: pool then f; checked against functional code."""
    x = torch.randn(2, 1, 32, 32)
    for where in ("before_pool", "after_pool"):
        model = LeNet5(as_config(compose("model.pool=max", "model.activation=sigmoid", f"model.activation_at={where}")).model)
        c1_out = model.c1(x)
        if where == "before_pool":
            expected = F.max_pool2d(torch.sigmoid(c1_out), 2)
        else:
            expected = torch.sigmoid(F.max_pool2d(c1_out, 2))
        captured = {}
        model.s2.register_forward_hook(lambda m, i, o: captured.setdefault("s2", o))
        model(x)
        s2_state = captured["s2"] if where == "before_pool" else torch.sigmoid(captured["s2"])
        torch.testing.assert_close(s2_state, expected)


@pytest.mark.parametrize("name", list(Activation))
def test_squashing_slope_is_the_derivative_autograd_finds(name):
    """SDLM's curvature pass uses the written-out f'; it must be the derivative of f itself."""
    squash = make_activation(name)
    a = torch.linspace(-4, 4, 801, dtype=torch.float64).requires_grad_(True)  # 0 included: ReLU's kink
    (expected,) = torch.autograd.grad(squash(a).sum(), a)
    torch.testing.assert_close(squashing_slope(squash, a.detach()), expected)
