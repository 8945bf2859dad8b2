"""The SDLM options table from made-up runs: the pass-1 range, a stopped run's last pass, the worst layer."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.sdlm_options import LAYERS, options_table

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow


def test_options_table_reads_pass_one_and_each_runs_last_completed_pass():
    settings = {"optim": "sdlm", "init": "lush", "model.init_gain": "None", "optim.mu": "0.02", "data.batch_size": "4",
                "optim.curvature_samples": "500", "optim.curvature_every": "0", "optim.curvature_gamma": "0.0",
                "loss.j": "0.1", "data.train_subset": "0", "trainer.max_epochs": "20", "seed": 0}  # fmt: skip
    runs = pd.DataFrame(
        [
            {**settings, "run_id": "done", "variant_hash": "a", "status": "FINISHED"},
            {**settings, "run_id": "stopped", "variant_hash": "b", "status": "KILLED"},
            {**settings, "optim": "adam", "run_id": "adam", "variant_hash": "c", "status": "FINISHED"},
        ]
    )
    rows = []
    for run_id, passes in (("done", 3), ("stopped", 2)):
        for step in range(1, passes + 1):
            rows += [(run_id, "sdlm/step_min/all", step, 1e-4 * step), (run_id, "sdlm/step_max/all", step, 1e-2 * step),
                     (run_id, "sdlm/h_below_mu_pct/all", step, 10.0 * step), (run_id, "train_error", step, 5.0 - step),
                     (run_id, "val_error", step, [3.0, 1.0, 2.0][step - 1]), (run_id, "test_error", step, 4.0 - step)]  # fmt: skip
            rows += [(run_id, f"sdlm/h_below_mu_pct/{layer}", step, 30.0 * (layer == "c5") * step) for layer in LAYERS]
    curves = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])
    table = options_table(runs, curves).set_index("run_id")
    assert list(table.index) == ["done", "stopped"]  # the Adam run is no SDLM option
    assert table.loc["done", "pass-1 step min"] == pytest.approx(1e-4) and table.loc["done", "pass-1 step max"] == pytest.approx(1e-2)
    assert table.loc["done", "passes done"] == "3" and table.loc["stopped", "passes done"] == "2 (killed)"
    assert table.loc["done", "last-pass h<mu %"] == 30 and table.loc["stopped", "last-pass h<mu %"] == 20
    assert table.loc["done", "most h<mu at last pass"] == "c5 90%" and table.loc["stopped", "most h<mu at last pass"] == "c5 60%"
    assert table.loc["done", "best val error % (pass)"] == "1.00 (2)"
    assert (table.loc["done", "val error %"], table.loc["done", "train error %"], table.loc["done", "test error %"]) == (2.0, 2.0, 1.0)
