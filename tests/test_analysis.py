"""The analysis package on real runs in a real MLflow store: tidy frames, tables checked
against scipy computed straight from `mlflow.search_runs`, the report CLI, the notebook."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import mlflow
import numpy as np
import nbclient
import nbformat
import pandas as pd
import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from scipy import stats

from analysis.report import main, write_report
from analysis.runs import ReportError, global_tracking_uri, load_curves, load_runs
from analysis.stats import STALL_ERROR, factor_table, holm, variant_table
from lenet5.config import PROJECT_DIR
from lenet5.presets import preset_factors
from lenet5.identity import flatten_config, run_name, run_tags
from lenet5.jobs import train

from .helpers import compose, fresh_store, small_overrides

EXPERIMENT = "ablation"
SWEEP_ID = "sweep0001"
#: `variant=` delta -> seeds trained. Adam at lr 3e-3 so 500 images and one epoch already
#: separate the variants (the paper's SGD stays at chance that early, with ties across seeds).
SEEDS = {"none": [0, 1], "pool_max": [0, 1], "head_softmax_ce": [0, 1], "act_relu": [0]}
LABELS = {
    "none": "paper optim=adam",
    "pool_max": "paper pool=max optim=adam",
    "head_softmax_ce": "paper head=softmax loss=cross_entropy optim=adam",
    "act_relu": "paper act=relu optim=adam",
}
BASELINE = "experiment=paper"  # several variants match; the one with variant=none is taken


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A store with 7 real runs (SEEDS) in EXPERIMENT, plus what must be left out: a sweep
    parent (its sweep holds the none and pool_max runs), a FAILED copy of a run, and an
    experiment holding only a FAILED run. Returns (tracking URI, {delta: {seed: run_id}})."""
    store = fresh_store(tmp_path_factory.mktemp('analysis'))
    common = ["experiment=paper", "optim=adam", "optim.lr=0.003", "data.batch_size=32", *small_overrides(store, EXPERIMENT, subset=500)]
    run_ids = {
        delta: {
            seed: train(compose(*common, f"variant={delta}", f"seed={seed}", "data.test_subset=500"))["run_id"]
            for seed in seeds
        }
        for delta, seeds in SEEDS.items()
    }
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = client.create_run(experiment_id, run_name=f"sweep {SWEEP_ID}", tags={"sweep.parent": "true", "sweep_id": SWEEP_ID})
    client.set_terminated(parent.info.run_id, "FINISHED")
    for delta in ("none", "pool_max"):
        for run_id in run_ids[delta].values():
            client.set_tag(run_id, "sweep_id", SWEEP_ID)
            client.set_tag(run_id, "mlflow.parentRunId", parent.info.run_id)
    template = client.get_run(run_ids["act_relu"][0]).data.tags
    _fake_run(client, experiment_id, {**template, "mlflow.runName": "paper act=relu optim=adam seed=1", "seed": "1"}, "FAILED")
    _fake_run(client, client.create_experiment("only_failed"), template, "FAILED")
    return store, run_ids


def _fake_run(client: MlflowClient, experiment_id: str, tags: dict[str, str], status: str) -> None:
    """A run with a training run's tags and a final test error but no training behind it."""
    run = client.create_run(experiment_id, run_name=tags["mlflow.runName"], tags=tags)
    client.log_metric(run.info.run_id, "test_error", 50.0, step=1)
    client.set_terminated(run.info.run_id, status)


@pytest.fixture(scope="module")
def runs(study):
    return load_runs(study[0], EXPERIMENT)


def _direct_errors(store: str) -> dict[str, pd.Series]:
    """{variant label: final test error (%) per seed} straight from `mlflow.search_runs`."""
    with global_tracking_uri(store):
        raw = mlflow.search_runs(experiment_names=[EXPERIMENT])
    finished = raw[(raw["status"] == "FINISHED") & raw["tags.config_hash"].notna()]
    return {
        LABELS[delta]: group.set_index(group["tags.seed"].astype(int))["metrics.test_error"].sort_index()
        for delta, group in finished.groupby("tags.ablation.variant")
    }


# --- load_runs / load_curves -------------------------------------------------------------


def test_one_row_per_finished_training_run(study, runs):
    _, run_ids = study
    assert sorted(runs["run_id"]) == sorted(r for seeds in run_ids.values() for r in seeds.values())
    assert runs.groupby("variant")["seed"].apply(sorted).to_dict() == {LABELS[d]: s for d, s in SEEDS.items()}
    assert runs["seed"].dtype.kind == "i"
    assert runs.groupby("variant")["variant_hash"].nunique().eq(1).all() and runs["variant_hash"].nunique() == 4
    row = runs.set_index("run_id").loc[run_ids["head_softmax_ce"][1]]
    assert (row["run_name"], row["experiment"], row["delta"]) == (f"{LABELS['head_softmax_ce']} seed=1", "paper", "head_softmax_ce")
    assert (row["pool"], row["head"], row["loss"], row["optim"], row["activation_at"]) == ("subsample", "softmax", "cross_entropy", "adam", "both")
    assert row["optim.lr"] == "0.003" and row["data.train_subset"] == "500" and row["data.batch_size"] == "32"
    assert 0 <= row["test_error"] <= 100 and 0 <= row["train_error"] <= 100 and math.isnan(row["val_error"])
    # Only scientific params: where the run was logged or read from is not a difference between variants.
    assert not {"tracking.uri", "data.root", "trainer.progress_bar", "model.pool", "optim.name"} & set(runs.columns)
    assert not [column for column in runs.columns if column.startswith(("params.", "tags.", "metrics."))]


def test_sweep_filter_keeps_its_children_and_drops_the_parent(study):
    store, run_ids = study
    swept = load_runs(store, EXPERIMENT, sweep_id=SWEEP_ID)
    assert sorted(swept["run_id"]) == sorted([*run_ids["none"].values(), *run_ids["pool_max"].values()])
    assert set(swept["sweep_id"]) == {SWEEP_ID}


def test_load_runs_leaves_the_global_tracking_uri_alone(study, tmp_path):
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with global_tracking_uri(elsewhere):
        load_runs(study[0], EXPERIMENT)
        assert mlflow.get_tracking_uri() == elsewhere == os.environ["MLFLOW_TRACKING_URI"]


def test_a_name_shared_by_two_configurations_gets_a_hash_suffix(study):
    store, run_ids = study
    client = MlflowClient(store)
    experiment_id = client.create_experiment("shared_names")
    tags = client.get_run(run_ids["none"][0]).data.tags
    for variant_hash in ("aaaaaa111111", "bbbbbb222222"):
        _fake_run(client, experiment_id, {**tags, "variant_hash": variant_hash}, "FINISHED")
    labels = load_runs(store, "shared_names")["variant"]
    assert sorted(labels) == [f"{LABELS['none']} [aaaaaa]", f"{LABELS['none']} [bbbbbb]"]


def test_curves_are_the_metric_histories(study, runs):
    store, run_ids = study
    curves = load_curves(store, runs["run_id"])
    assert set(curves["metric"]) == {"test_error", "train_error", "train_loss"}  # no validation split
    assert len(curves) == 3 * len(runs) and set(curves["step"]) == {1}
    final = curves[curves["metric"] == "test_error"].set_index("run_id")["value"]
    assert final.to_dict() == pytest.approx(runs.set_index("run_id")["test_error"].to_dict())


@pytest.mark.parametrize(
    "experiment, sweep_id, message",
    [
        ("nope", None, "unknown experiment 'nope' (experiments in the store: "),
        (EXPERIMENT, "nope", f"unknown sweep id 'nope' in experiment '{EXPERIMENT}' (sweep ids there: {SWEEP_ID})"),
        ("only_failed", None, "no FINISHED training runs in experiment 'only_failed'"),
    ],
)
def test_load_errors_name_the_bad_value(study, experiment, sweep_id, message):
    with pytest.raises(ReportError) as raised:
        load_runs(study[0], experiment, sweep_id)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    if experiment == "nope":
        assert EXPERIMENT in str(raised.value) and "only_failed" in str(raised.value)


# --- variant table -----------------------------------------------------------------------


def test_holm_matches_a_hand_computed_example():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 4 x 0.01 = 0.04, 3 x 0.02 = 0.06, 2 x 0.03 = 0.06
    # (already monotone), 1 x 0.04 = 0.04 -> raised to the running maximum 0.06. NaN: not tested.
    adjusted = holm([0.03, 0.01, float("nan"), 0.04, 0.02])
    assert adjusted == pytest.approx([0.06, 0.04, float("nan"), 0.06, 0.06], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_variant_table_matches_scipy_on_the_raw_runs(study, runs):
    table = variant_table(runs, BASELINE).set_index("variant")
    errors = _direct_errors(study[0])
    baseline = errors[LABELS["none"]]
    assert list(table.index) == [LABELS[d] for d in SEEDS]  # baseline first, then in run order
    assert table["baseline"].to_dict() == {label: label == LABELS["none"] for label in table.index}
    raw_p, raw_t = {}, {}
    for label, values in errors.items():
        row = table.loc[label]
        assert row["n"] == len(values)
        assert row["mean"] == pytest.approx(values.mean())
        assert row["diff"] == pytest.approx(values.mean() - baseline.mean())
        if len(values) > 1:
            half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
            assert (row["std"], row["ci_low"], row["ci_high"]) == pytest.approx(
                (values.std(), values.mean() - half, values.mean() + half)
            )
        if label != LABELS["none"] and len(values) > 1:
            paired = np.round(values - baseline[values.index], 6)
            raw_p[label] = stats.wilcoxon(paired, method="exact").pvalue  # the rule's test, signed-rank
            raw_t[label] = stats.ttest_rel(values, baseline[values.index]).pvalue  # the t-test kept beside it
            assert row["p"] == pytest.approx(raw_p[label], nan_ok=True) and row["n_paired"] == 2
    for column, raw in (("p_holm", raw_p), ("p_t_holm", raw_t)):
        (first, p_first), (second, p_second) = sorted(raw.items(), key=lambda item: item[1])
        assert table.loc[first, column] == pytest.approx(min(1, 2 * p_first))
        assert table.loc[second, column] == pytest.approx(max(min(1, 2 * p_first), p_second))
    best = min(errors, key=lambda label: errors[label].mean())
    assert table.index[table["best"]].tolist() == [best]


def test_a_single_seed_variant_has_no_interval_and_no_test(runs):
    row = variant_table(runs, BASELINE).set_index("variant").loc[LABELS["act_relu"]]
    assert row["n"] == 1 and row["n_paired"] == 1
    assert all(math.isnan(row[key]) for key in ("std", "ci_low", "ci_high", "p", "p_holm", "p_tost", "seeds_needed"))
    assert row["verdict"] == "undecided"
    assert not math.isnan(row["mean"]) and not math.isnan(row["diff"])


def test_baseline_selection(runs):
    assert variant_table(runs, LABELS["pool_max"])["variant"].iloc[0] == LABELS["pool_max"]
    assert variant_table(runs, "pool=max")["variant"].iloc[0] == LABELS["pool_max"]
    assert variant_table(runs, "model.head=softmax, loss=cross_entropy")["variant"].iloc[0] == LABELS["head_softmax_ce"]
    unnamed = variant_table(runs)  # no variant is labelled "paper": no baseline columns
    assert not unnamed["baseline"].any() and unnamed[["diff", "p", "p_holm"]].isna().all().all()
    # A study on Fashion-MNIST: every label carries the dataset; the paper preset as is is the baseline.
    fashion = variant_table(runs.assign(variant=runs["variant"].str.replace("optim=adam", "dataset=fashion_mnist")))
    assert fashion.set_index("variant")["baseline"].to_dict() == {
        label.replace("optim=adam", "dataset=fashion_mnist"): delta == "none" for delta, label in LABELS.items()
    }
    assert fashion.loc[~fashion["baseline"], "diff"].notna().all()
    without_none = runs[runs["delta"] != "none"]
    with pytest.raises(ReportError, match="must match one variant, matches: paper pool=max optim=adam; paper head="):
        variant_table(without_none, BASELINE)
    with pytest.raises(ReportError, match="baseline 'colour=red' is neither a variant"):
        variant_table(runs, "colour=red")


# --- factor table ------------------------------------------------------------------------


def test_factor_table_isolates_clean_factors_and_flags_head_with_loss(study, runs):
    table = factor_table(runs).set_index("factor")
    errors = _direct_errors(study[0])
    paper = errors[LABELS["none"]]
    assert list(table.index) == ["pool", "activation", "head+loss"]

    pool_diffs = errors[LABELS["pool_max"]] - paper  # oriented from the paper's choice: max - subsample
    pool = table.loc["pool"]
    assert (pool["change"], pool["flag"], pool["n_pairs"], pool["n"]) == ("subsample → max", "", 1, 2)
    # Of two differences the Hodges-Lehmann estimate is their mean, and no shift is rejected at 5 %.
    assert (pool["effect"], pool["mean_effect"]) == pytest.approx((pool_diffs.mean(), pool_diffs.mean()))
    assert (pool["ci_low"], pool["ci_high"]) == (-math.inf, math.inf)

    activation = table.loc["activation"]  # one paired seed: an effect, an unbounded interval
    assert activation["change"] == "scaled_tanh → relu" and activation["n"] == 1
    assert activation["effect"] == pytest.approx(errors[LABELS["act_relu"]][0] - paper[0])
    assert (activation["ci_low"], activation["ci_high"]) == (-math.inf, math.inf)

    # Softmax + cross-entropy vs RBF + MAP is not the effect of either alone: its own flagged
    # row, never a "head" or "loss" row; pool_max vs head_softmax_ce (three changes) is not shown.
    confounded = table.loc["head+loss"]
    assert confounded["flag"] == "confounded: head and loss change together"
    assert confounded["change"] == "rbf → softmax, map → cross_entropy"
    assert confounded["effect"] == pytest.approx((errors[LABELS["head_softmax_ce"]] - paper).mean())
    assert confounded["n_pairs"] == 1 and confounded["n"] == 2


def test_a_pair_that_also_differs_in_another_param_is_flagged_not_pooled(runs):
    """Max-pooling at batch 64 (made from the real max-pool runs): compared with the paper at
    batch 32 it is flagged; the clean subsample → max row is unchanged; and it is oriented from
    the paper's choice even though it comes first in the frame."""
    batch_64 = runs[runs["delta"] == "pool_max"].assign(
        **{"data.batch_size": "64", "variant": "paper pool=max optim=adam batch=64", "variant_hash": "batch64", "test_error": lambda r: r["test_error"] + 1}
    )
    both = pd.concat([batch_64, runs[runs["delta"].isin(["none", "pool_max"])]], ignore_index=True)
    table = factor_table(both)
    clean = table[table["flag"] == ""]
    assert clean[["factor", "change", "n_pairs", "n"]].values.tolist() == [["pool", "subsample → max", 1, 2]]
    # batch 64 vs batch 32 with pool=max on both sides differs in no factor: not a row at all.
    assert len(table) == 1
    without_clean = factor_table(pd.concat([batch_64, runs[runs["delta"] == "none"]], ignore_index=True))
    (flagged,) = without_clean.to_dict("records")
    assert flagged["factor"] == "pool" and flagged["change"] == "subsample → max"
    assert flagged["flag"] == "also differs: data.batch_size (32 → 64)"
    paper = runs[runs["delta"] == "none"].set_index("seed")["test_error"]
    assert flagged["effect"] == pytest.approx((batch_64.set_index("seed")["test_error"] - paper).mean())


PATH_STEPS = ["none", "pool_max", "path_2_act", "path_3_head_loss", "path_4_c3", "path_5_init", "path_6_optim"]


def test_factor_table_along_the_paper_to_modern_path(study):
    """The `path` sweep's real configs (composed from conf/variant/, logged as a training run
    logs them) with made-up errors: step k has 5 - k + 0.1 k x seed, so every step changes
    the error by -1 on seed 0 and -0.9 on seed 1."""
    store, _ = study
    client = MlflowClient(store)
    experiment_id = client.create_experiment("path")
    for step, delta in enumerate(PATH_STEPS):
        for seed in (0, 1):
            cfg = compose("experiment=paper", f"variant={delta}", f"seed={seed}")
            run = client.create_run(experiment_id, run_name=run_name(cfg, preset_factors("paper")), tags=run_tags(cfg))
            client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in flatten_config(cfg).items()])
            client.log_metric(run.info.run_id, "test_error", 5 - step + 0.1 * step * seed, step=1)
            client.set_terminated(run.info.run_id, "FINISHED")
    table = factor_table(load_runs(store, "path"))
    # Only consecutive steps are minimal; none -> path_2 (pool, activation, activation_at) is not shown.
    assert table[["factor", "change", "flag"]].values.tolist() == [
        ["pool", "subsample → max", ""],
        ["activation+activation_at", "scaled_tanh → relu, both → before_pool", "confounded: activation and activation_at change together"],
        ["c3", "table → full", ""],
        ["head+loss", "rbf → softmax, map → cross_entropy", "confounded: head and loss change together"],
        ["init", "lush → default", ""],
        # Adam's own lr and schedule come with the optimizer; the batch size does not.
        ["optim", "sdlm → adam", "also differs: data.batch_size (4 → 64)"],
    ]
    assert table["effect"].tolist() == pytest.approx([-0.95] * 6)
    assert (table["n_pairs"].tolist(), table["n"].tolist()) == ([1] * 6, [2] * 6)


def test_a_single_variant_has_no_factor_rows(runs):
    table = factor_table(runs[runs["delta"] == "none"])
    assert table.empty and list(table.columns) == [
        "factor", "change", "effect", "ci_low", "ci_high", "mean_effect", "n_pairs", "n",
        "p", "p_holm", "p_tost", "p_tost_holm", "verdict", "seeds_needed", "p_t_holm", "p_t_tost_holm", "verdict_t", "flag", "margin",
    ]  # fmt: skip


# --- report ------------------------------------------------------------------------------

REPORT_FILES = {
    f"{stem}.{suffix}" for stem in ("variants", "factors") for suffix in ("md", "tex", "csv", "html")
} | {"runs.csv", "variants.png", "factors.png", "learning_curves.png"}


def test_report_cli_writes_every_file_and_prints_the_table(study, runs, tmp_path):
    store, _ = study
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out", str(out), "--baseline", BASELINE],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert {path.name for path in out.iterdir()} == REPORT_FILES
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in REPORT_FILES if name.endswith(".png"))

    table_lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    written = (out / "variants.md").read_text(encoding="utf-8").splitlines()
    assert table_lines == [line for line in written if line.startswith("|")]
    assert written[-1].startswith("Fixed recipe:") and written[-1] in done.stdout  # no run here is a study's final
    # The verdicts' line, with the margin used (MNIST's default), printed too.
    assert written[-3].startswith("Verdicts at margin ±0.1 pp, Holm-adjusted α = 0.05: ") and written[-3] in done.stdout
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table_lines]
    assert header == [
        "variant", "n", "test error % (mean ± std)", "95% CI", "Δ vs baseline (pp, HL)", "Δ 95% CI",
        "p (Holm)", "p TOST (Holm)", "verdict", "seeds needed", "stalls", "stall p (Holm)", "t-test verdict",
    ]  # fmt: skip
    shown = {row[0].removesuffix(" ★"): row for row in rows}
    assert {label: int(row[1]) for label, row in shown.items()} == {LABELS[d]: len(s) for d, s in SEEDS.items()}
    assert sum(row[0].endswith("★") for row in rows) == 1
    assert shown[LABELS["none"]][4] == "baseline" and shown[LABELS["act_relu"]][3] == ""
    assert shown[LABELS["none"]][8] == "" and shown[LABELS["act_relu"]][8] == "undecided"  # one seed: no test, no plan
    assert {row[8] for row in rows} <= {"", "worse", "better", "equivalent", "undecided"}
    stalled = runs.groupby("variant")["test_error"].agg(lambda e: f"{(e >= STALL_ERROR).sum()}/{len(e)}")
    assert {label: row[10] for label, row in shown.items()} == stalled.to_dict()
    assert shown[LABELS["none"]][11] == ""  # the baseline is what the others' stall rates are compared with
    means = variant_table(runs, BASELINE).set_index("variant")["mean"]
    assert shown[LABELS["pool_max"]][2].startswith(f"{means[LABELS['pool_max']]:.2f} ± ")
    assert str(out.resolve()) in done.stdout.splitlines()[-1]

    numbers = pd.read_csv(out / "variants.csv")
    assert numbers["mean"].tolist() == pytest.approx(means.tolist())
    assert "confounded: head and loss change together" in (out / "factors.md").read_text(encoding="utf-8")
    latex = (out / "variants.tex").read_text(encoding="utf-8")
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and r"\bfseries" in latex and "loss=cross\\_entropy" in latex
    assert "font-weight: bold" in (out / "variants.html").read_text(encoding="utf-8")


def test_figures_keep_their_axes_beside_a_path_steps_long_label(runs, tmp_path):
    """A path step's label runs to ~110 characters; in a fixed-width figure the constrained
    layout gave up ("axes sizes collapsed to zero") and warned on every report."""
    import warnings

    from analysis.plots import factors_figure, save, variants_figure

    long_label = "paper pool=max act=relu act_at=before_pool c3=full head=softmax init=default loss=cross_entropy optim=adam"
    relabelled = runs.assign(variant=runs["variant"].replace({LABELS["pool_max"]: long_label}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, figure in (("v", variants_figure(variant_table(relabelled, BASELINE))), ("f", factors_figure(factor_table(relabelled)))):
            save(figure, tmp_path / f"{name}.png")
            (ax,) = figure.axes
            assert ax.get_position().width > 0.2  # the axes keep a fifth of the figure at least


def test_the_same_runs_give_the_same_table_files_byte_for_byte(study, tmp_path):
    """A committed study is regenerated by rerunning its command: its tables (the HTML pages
    too, whose Styler ids default to a random uuid) must not change when the runs did not."""
    first = write_report(study[0], EXPERIMENT, tmp_path / "first")
    second = write_report(study[0], EXPERIMENT, tmp_path / "second")
    tables = [name for name in first if name.rsplit(".", 1)[-1] in ("md", "tex", "csv", "html")]
    assert {"variants.html", "factors.html"} <= set(tables)
    assert [name for name in tables if first[name].read_bytes() != second[name].read_bytes()] == []


def test_write_report_for_one_sweep(study, tmp_path):
    files = write_report(study[0], EXPERIMENT, tmp_path / "sweep", sweep_id=SWEEP_ID)
    assert set(files) == REPORT_FILES and all(path.is_file() for path in files.values())
    assert pd.read_csv(files["variants.csv"])["variant"].tolist() == [LABELS["none"], LABELS["pool_max"]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "nope"], "error: unknown experiment 'nope'"),
        (["--experiment", EXPERIMENT, "--sweep", "nope"], "error: unknown sweep id 'nope'"),
        (["--experiment", "only_failed"], "error: no FINISHED training runs in experiment 'only_failed'"),
        (["--runs-csv", "no/such/runs.csv"], "error: no runs file at no/such/runs.csv"),
        (["--runs-csv", "pyproject.toml"], "error: pyproject.toml is not a report's runs.csv"),
    ],
)
def test_report_errors_are_one_line_and_exit_2(study, tmp_path, capsys, args, message):
    assert main([*args, "--tracking-uri", study[0], "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1 and captured.out == ""
    assert not (tmp_path / "out").exists()


def test_report_error_exit_code_in_a_subprocess(study):
    done = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--experiment", "nope", "--tracking-uri", study[0]],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown experiment 'nope'") and done.stderr.count("\n") == 1


# --- notebook ----------------------------------------------------------------------------

NOTEBOOK = PROJECT_DIR / "analysis" / "ablation.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_notebook_runs_headless_against_the_store(study, tmp_path, monkeypatch):
    # A kernelspec of this very interpreter, found first through JUPYTER_PATH, so the notebook
    # imports the same `analysis` whatever kernels the machine has installed.
    kernel_dir = tmp_path / "kernels" / "lenet5-analysis"
    kernel_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "lenet5 analysis", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("LENET5_TRACKING_URI", study[0])
    monkeypatch.setenv("LENET5_EXPERIMENT", EXPERIMENT)
    monkeypatch.setenv("LENET5_BASELINE", BASELINE)
    monkeypatch.delenv("LENET5_SWEEP", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="lenet5-analysis", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3
    text = "\n".join(output.get("data", {}).get("text/plain", "") for output in outputs)
    assert all(label in text for label in LABELS.values()) and "head+loss" in text
