"""Per-layer parameter and connection counts: the paper's table, and what each factor changes."""

from __future__ import annotations

from lenet5.config import as_config
from lenet5.model.counts import counts_table
from lenet5.model.lenet5 import LeNet5

from .helpers import compose

# The paper's (and the reference's) table: trainable params and connections per layer.
PAPER = {
    "C1": (156, 122_304),
    "S2": (12, 5_880),
    "C3": (1_516, 151_600),
    "S4": (32, 2_000),
    "C5": (48_120, 48_120),
    "F6": (10_164, 10_164),
    "OUTPUT": (0, 840),
    "total": (60_000, 340_908),
}


def table(*overrides: str):
    cfg = compose(*overrides)
    size = 32 if str(cfg.data.preprocess.value) == "paper" else 28
    return counts_table(LeNet5(as_config(cfg).model, size)).set_index("layer")


def test_paper_counts_are_the_reference_table():
    counts = table("experiment=paper")
    assert {layer: (int(r.trainable_params), int(r.connections)) for layer, r in counts.iterrows()} == PAPER


def test_counts_agree_with_pytorch_parameter_count():
    cfg = compose("experiment=modern")
    model = LeNet5(as_config(cfg).model)
    assert table("experiment=modern").loc["total", "trainable_params"] == sum(p.numel() for p in model.parameters())


def test_factor_changes_move_the_right_layers():
    full_c3 = table("model.c3=full")
    assert full_c3.loc["C3", "trainable_params"] == 6 * 16 * 25 + 16
    assert full_c3.loc["C3", "connections"] == (6 * 25 + 1) * 16 * 100
    pooled = table("model.pool=max")
    assert pooled.loc["S2", "trainable_params"] == 0 and pooled.loc["S2", "connections"] == 4 * 6 * 14 * 14
    softmax = table("model.head=softmax", "loss=cross_entropy")
    assert softmax.loc["OUTPUT", "trainable_params"] == 85 * 10


def test_tutorial_geometries():
    tf = table("experiment=seed004_tf")
    assert tf.loc["C5", "output_shape"] == "120x7x7"
    assert tf.loc["F6", "trainable_params"] == 5880 * 80 + 80
    torch_tutorial = table("experiment=seed001_tutorial")
    assert torch_tutorial.loc["C1", "trainable_params"] == 6 * 9 + 6
    assert torch_tutorial.loc["C5", "trainable_params"] == 400 * 120 + 120  # Linear 400 -> 120
    assert torch_tutorial.loc["total", "trainable_params"] == 60 + 2416 + 48120 + 10164 + 850
