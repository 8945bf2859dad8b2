"""The factorial tables (`analysis.factorial`) on synthetic studies whose effects are known: the
card's 2 x 4 x 2 grid built from a published study's runs.csv rows, test errors set by a known
model. No training: fast."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.factorial import ABSENT, PRESENT, contrasts, factorial_design, planned_seeds
from analysis.report import main as report_main
from analysis.runs import read_runs_csv
from lenet5.config import PROJECT_DIR

TEMPLATE = read_runs_csv(PROJECT_DIR / "results" / "ablation" / "mnist-ofat" / "runs.csv").iloc[0]
POOLS, ACTIVATIONS, HEADS = ["subsample", "max"], ["scaled_tanh", "tanh", "sigmoid", "relu"], ["rbf", "softmax"]
#: The known model (points of test error): main effects, and one interaction, max-pooling under ReLU.
POOL = {"subsample": 0.0, "max": 0.3}
ACTIVATION = {"scaled_tanh": 0.0, "tanh": 0.0, "sigmoid": 1.0, "relu": -0.5}
HEAD = {"rbf": 0.0, "softmax": -0.2}
MAX_UNDER_RELU = 0.4
MARGIN = 0.1


def synthetic_factorial(seeds: int = 12, interaction: float = MAX_UNDER_RELU, noise: float = 0.03, drop=()) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.05, seeds)
    rows = []
    for pool, activation, head in itertools.product(POOLS, ACTIVATIONS, HEADS):
        if (pool, activation, head) in drop:
            continue
        label = f"paper pool={pool} act={activation} head={head}"
        for seed in range(seeds):
            error = 1.0 + POOL[pool] + ACTIVATION[activation] + HEAD[head] + seed_effect[seed] + rng.normal(0, noise)
            error += interaction if (pool, activation) == ("max", "relu") else 0.0
            row = TEMPLATE.copy()
            row[["variant", "seed", "pool", "activation", "head", "test_error"]] = [label, seed, pool, activation, head, round(error, 2)]
            row["loss"] = "map" if head == "rbf" else "cross_entropy"
            row["run_id"] = f"{label} {seed}"
            rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def test_the_tables_recover_known_main_effects_and_the_one_interaction_within_their_intervals():
    runs = synthetic_factorial()
    design = factorial_design(runs)
    assert design is not None and design.complete and design.factors == ["pool", "activation", "head"]
    tables = contrasts(runs, design, MARGIN)
    main = tables["main"].set_index("contrast")
    # Averaged over the other factors: max-pooling's effect is 0.3 plus a quarter of the ReLU interaction.
    expected = {
        "pool: subsample → max": POOL["max"] + MAX_UNDER_RELU / 4,
        "activation: scaled_tanh → relu": ACTIVATION["relu"] + MAX_UNDER_RELU / 2,
        "activation: scaled_tanh → sigmoid": ACTIVATION["sigmoid"],
        "head: rbf → softmax": HEAD["softmax"],
    }
    for contrast, truth in expected.items():
        row = main.loc[contrast]
        assert row["ci_low"] <= truth <= row["ci_high"], (contrast, row.to_dict())
        assert row["verdict"] == ("worse" if truth > 0 else "better")
    assert main.loc["activation: scaled_tanh → tanh", "verdict"] == "equivalent"
    interactions = tables["interactions"].set_index("contrast")
    real = interactions.loc["pool subsample → max × activation scaled_tanh → relu"]
    assert real["verdict"] == PRESENT and real["ci_low"] <= MAX_UNDER_RELU <= real["ci_high"]
    others = interactions.drop(index=real.name)
    assert (others["verdict"] != PRESENT).all() and (others["verdict"] == ABSENT).sum() >= 1
    simple = tables["simple"].set_index("contrast")
    at = simple.loc["pool: subsample → max at activation=relu, head=softmax"]
    assert at["ci_low"] <= POOL["max"] + MAX_UNDER_RELU <= at["ci_high"]


def test_a_study_with_no_interaction_gets_no_present():
    runs = synthetic_factorial(interaction=0.0)
    tables = contrasts(runs, factorial_design(runs), MARGIN)
    assert (tables["interactions"]["verdict"] != PRESENT).all()


@pytest.mark.slow  # writes whole reports
def test_an_incomplete_factorial_says_what_is_missing_and_a_non_factorial_gets_no_factorial_tables(tmp_path):
    runs = synthetic_factorial(seeds=4, drop=[("max", "relu", "softmax")])
    design = factorial_design(runs)
    assert design is not None and not design.complete
    runs.to_csv(tmp_path / "runs.csv", index=False)
    assert report_main(["--runs-csv", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "factorial.md").read_text(encoding="utf-8")
    assert text.startswith("Incomplete factorial: 1 of its 16 cells") and "pool=max, activation=relu, head=softmax" in text
    assert not (tmp_path / "report" / "factorial_main.csv").exists()
    # One factor at a time is no factorial: the report is as before, no factorial.md.
    ofat = PROJECT_DIR / "results" / "ablation" / "mnist-ofat" / "runs.csv"
    assert factorial_design(read_runs_csv(ofat)) is None


def test_unequal_seeds_analyse_the_balanced_set_only():
    runs = synthetic_factorial(seeds=8)
    extra = runs[runs["variant"] == runs["variant"].iloc[0]].assign(seed=lambda r: r["seed"] + 100, run_id=lambda r: r["run_id"] + "x")
    design = factorial_design(pd.concat([runs, extra], ignore_index=True))
    assert design.balanced_seeds == list(range(8))
    assert set(contrasts(runs, design, MARGIN)["main"]["n"]) == {8}


@pytest.mark.slow  # writes whole reports
@pytest.mark.parametrize("seeds", [12])
def test_the_report_writes_the_factorial_tables_and_rebuilds_them_byte_for_byte(tmp_path, seeds):
    runs = synthetic_factorial(seeds)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    for out in ("a", "b"):
        assert report_main(["--runs-csv", str(tmp_path / "runs.csv"), "--out", str(tmp_path / out)]) == 0
    names = ["factorial.md", "factorial_main.csv", "factorial_interactions.csv", "factorial_simple.csv", "factorial_anova.csv"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    text = (tmp_path / "a" / "factorial.md").read_text(encoding="utf-8")
    assert "## Interactions (margin ±0.2 pp)" in text and "C(pool):C(activation)" in text
    assert (tmp_path / "a" / "factorial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_pilot_plans_one_number_of_seeds_for_every_cell_from_its_main_effects_and_two_way_interactions():
    pilot = synthetic_factorial(seeds=3)
    n, planned = planned_seeds(pilot, MARGIN, min_seeds=6, max_seeds=16)
    assert set(planned["kind"]) == {"main effect", "interaction"} and not planned["contrast"].str.count(" × ").gt(1).any()
    # Three seeds decide nothing under an exact rank test: every contrast has its plan, the largest is n.
    assert (planned["verdict"] == "undecided").all()
    assert n == int(min(max(planned["seeds_needed"].max(), 6), 16)) and 6 <= n <= 16
    with pytest.raises(ValueError, match="Incomplete factorial"):
        planned_seeds(synthetic_factorial(seeds=3, drop=[("max", "relu", "rbf")]), MARGIN, 6, 16)


def test_one_factor_at_a_time_over_binary_factors_is_no_factorial():
    """paper, pool=max, act=relu and head=softmax cover half of their 2 x 2 x 2 grid, but no cell
    crosses two changes: no factorial, so the report stays as it was."""
    runs = synthetic_factorial(seeds=3)
    ofat = runs[((runs["pool"] == "max").astype(int) + (runs["activation"] != "scaled_tanh").astype(int)
                 + (runs["head"] == "softmax").astype(int)) <= 1]
    ofat = ofat[ofat["activation"].isin(["scaled_tanh", "relu"])]
    assert ofat["variant"].nunique() == 4 and factorial_design(ofat) is None
