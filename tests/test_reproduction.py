"""The reproduction command end to end on a tiny budget: runs, table from the store, Fig. 5 plot."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from analysis.reproduction import BY_NAME, SYSTEMS, carry_over
from analysis.reproduction import main as reproduction_main
from lenet5.config import PROJECT_DIR

from .helpers import fresh_store

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow


def test_a_row_counts_only_runs_of_its_preset_variant_and_budget():
    runs = pd.DataFrame(
        {
            "run_id": list("abcdefg"),
            "experiment": ["paper_distortions"] * 3 + ["seed004_tf"] * 3 + ["paper_distortions"],
            "delta": ["none", "none", "none", "none", "activation_after_pool", "none", "none"],
            # g was logged before the key existed: it trained as the default (0, full passes) does.
            "data.patterns_per_pass": ["60000", "0", "60000", "0", "0", "60000", None],
        }
    )
    assert BY_NAME["paper_distortions_60k"].runs(runs)["run_id"].tolist() == ["a", "c"]
    # The full protocol and the reduced budget of one preset never share runs, and a row
    # without a budget does not count a run that some budget changed.
    assert BY_NAME["paper_distortions"].runs(runs)["run_id"].tolist() == ["b", "g"]
    assert BY_NAME["seed004_tf"].runs(runs)["run_id"].tolist() == ["d"]
    assert BY_NAME["seed004_tf_after_pool"].runs(runs)["run_id"].tolist() == ["e"]
    assert BY_NAME["paper"].runs(runs).empty


def test_a_row_is_its_newest_recipe_never_a_mix():
    runs = pd.DataFrame(
        {
            "run_id": list("abcd"),
            "experiment": ["paper"] * 4,
            "delta": ["none"] * 4,
            "variant_hash": ["old", "old", "new", "new"],
            "start_time": pd.to_datetime(["2026-11-01", "2026-11-02", "2026-11-24", "2026-11-23"]),
        }
    )
    assert BY_NAME["paper"].runs(runs)["run_id"].tolist() == ["c", "d"]


def test_rows_without_runs_in_the_store_are_carried_over_from_the_previous_table(tmp_path):
    previous = pd.DataFrame({"system": ["paper", "modern", "seed004_tf"], "suite test error %": [1.31, 0.97, 4.39], "n": [5, 3, 3],
                             "budget": ["", "", ""], "source": ["a", "b", "c"]})
    previous.to_csv(tmp_path / "reproduction.csv", index=False)
    fresh = pd.DataFrame({"system": ["paper"], "suite test error %": [0.9], "n": [5], "budget": [""], "source": ["a"]})
    merged = carry_over(fresh, tmp_path / "reproduction.csv", SYSTEMS).set_index("system")
    # The fresh paper row wins over the old one; the rows with no runs here come back, marked, in SYSTEMS order.
    assert merged.loc["paper", "suite test error %"] == 0.9 and merged.loc["paper", "from"] == "this store"
    assert merged.loc["modern", "from"] == "previous table" and merged.loc["modern", "suite test error %"] == 0.97
    assert list(merged.index) == ["paper", "seed004_tf", "modern"]
    assert merged.loc["modern", "budget"] == ""  # an empty budget stays empty, not NaN, through the CSV
    assert carry_over(fresh, tmp_path / "absent.csv", SYSTEMS)["system"].tolist() == ["paper"]


@pytest.mark.slow
def test_reproduction_table_comes_from_the_runs(tmp_path):
    store = fresh_store(tmp_path)
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "analysis.reproduction", "--systems", "paper,modern,seed004_tf_after_pool", "--paper-seeds", "2",
         "--seeds", "1", "--experiment", "repro", "--tracking-uri", store, "--out", str(out), "--",
         "data.train_subset=300", "data.test_subset=300", "trainer.max_epochs=2",
         f"tracking.artifact_root={tmp_path / 'artifacts'}"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = (out / "reproduction.md").read_text()
    assert "experiment `repro`" in text and "data.train_subset=300" in text
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("repro").experiment_id], "tags.`ablation.experiment` = 'paper'")
    finished = [r.data.metrics["test_error"] for r in runs if r.info.status == "FINISHED" and "config_hash" in r.data.tags]
    assert len(finished) == 2
    (paper_row,) = [line for line in text.splitlines() if line.startswith("| paper ")]
    cells = [c.strip() for c in paper_row.strip("|").split("|")]
    mean = sum(finished) / 2
    assert cells[1] == "0.95" and cells[2].startswith(f"{mean:.2f} ± ") and cells[3] == "2"
    assert cells[4] == f"{mean - 0.95:+.2f}"
    assert any(line.startswith("| modern ") for line in text.splitlines())
    (after_pool,) = [line for line in text.splitlines() if line.startswith("| seed004_tf_after_pool ")]
    after_pool = [c.strip() for c in after_pool.strip("|").split("|")]
    assert after_pool[3] == "1" and after_pool[8] == "sgd lr 0.001, batch 200, 2 passes"  # n, recipe as logged
    csv = pd.read_csv(out / "reproduction.csv").set_index("system")  # unrounded
    assert csv.loc["seed004_tf_after_pool", "wall time per run (min)"] > 0
    assert 0 < csv.loc["seed004_tf_after_pool", "time per pass (s)"] < 60 * csv.loc["seed004_tf_after_pool", "wall time per run (min)"]
    assert (out / "fig5_paper_error_vs_passes.png").read_bytes()[:4] == b"\x89PNG"

    # Training one system later rebuilds the whole table: the others keep their rows.
    assert reproduction_main(["--systems", "modern", "--no-train", "--experiment", "repro", "--tracking-uri", store, "--out", str(out)]) == 0
    rows = [line.split("|")[1].strip() for line in (out / "reproduction.md").read_text().splitlines() if line.startswith("| ")]
    assert {"paper", "modern", "seed004_tf_after_pool"} <= set(rows)
