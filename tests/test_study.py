"""A tiny real fair study (python -m lenet5.study) in subprocesses, on a real MLflow store:
2 variants x 2 learning rates x 1 pass on 300 images, selected on the last 10,000 training
images, finals over 2 seeds; then the same command again, and a second study sharing a variant."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from lenet5.config import PROJECT_DIR
from lenet5.study import lr_grid, load_study_config, main

from .conftest import assert_tables_rebuild_from_runs_csv, small_overrides

EXPERIMENT = "fair"
VARIANTS = {"paper": "sdlm", "paper optim=adam": "adam"}
STUDY = ["study.tune.trials=2", "study.tune.passes=1", "study.final.seeds=[0,1]", "study.final.passes=1"]


def study_cli(*args: str, cwd, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lenet5.study", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{PROJECT_DIR / 'src'}{os.pathsep}{PROJECT_DIR}"},
    )  # fmt: skip


def run_overrides(store: str) -> list[str]:
    # small_overrides sets trainer.max_epochs, which a study owns (study.*.passes): left out.
    return [o for o in small_overrides(store, EXPERIMENT, subset=300) if not o.startswith("trainer.max_epochs")] + ["data.test_subset=300"]


def all_runs(store: str):
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    command = ["variant=none,optim_adam", *run_overrides(store), *STUDY, f"study.out={folder / 'report'}"]
    first = study_cli(*command, cwd=folder)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _, after_first = all_runs(store)
    # Again, with settings that change nothing trained (as a user resuming on another machine
    # might): still the same study, so no parent run and no training run is added.
    again = study_cli(*command, "trainer.compile=false", f"study.out={folder / 'report_again'}", cwd=folder)
    assert again.returncode == 0, again.stderr[-3000:]
    return store, folder, first, after_first, again


def _training_runs(runs, stage):
    return [r for r in runs if r.data.tags.get("stage") == stage and "config_hash" in r.data.tags]


@pytest.mark.slow
def test_each_variant_gets_the_argmin_of_its_tuning_runs_val_error(studied):
    store, _, _, runs, _ = studied
    cfg = load_study_config([o.removeprefix("study.") for o in STUDY])
    tune, finals = _training_runs(runs, "tune"), _training_runs(runs, "final")
    assert len(tune) == 4 and len(finals) == 4
    for label, optim in VARIANTS.items():
        mine = [r for r in tune if r.data.tags["study.variant"] == label]
        rates = {float(r.data.params["optim.lr"]): r for r in mine}
        assert sorted(rates) == lr_grid(cfg, optim) and len(rates) == 2
        # The choice, straight from the store: lowest last-pass val_error, ties to the smaller rate.
        best = min(rates, key=lambda lr: (rates[lr].data.metrics["val_error"], lr))
        own_finals = [r for r in finals if r.data.tags["study.variant"] == label]
        assert {float(r.data.params["optim.lr"]) for r in own_finals} == {best}
        assert {r.data.tags["tune.selected.optim.lr"] for r in own_finals} == {f"{best:g}"}
        assert {r.data.tags["tune.selected_run_ids"] for r in own_finals} == {rates[best].info.run_id}
        assert {r.data.tags["tune.id"] for r in own_finals} == {r.data.tags["tune.id"] for r in mine}
        assert {r.data.tags["tune.budget_passes"] for r in own_finals} == {"2"}  # 2 rates x 1 pass x 1 seed


@pytest.mark.slow
def test_tuning_runs_never_saw_the_test_set(studied):
    """data.test=false: the test split is not loaded, so no test metric or test input exists
    in a tuning run; the selection reads val_error, on the last 10,000 training images."""
    _, _, _, runs, _ = studied
    for run in _training_runs(runs, "tune"):
        params, metrics = run.data.params, run.data.metrics
        assert params["data.test"] == "False" and params["data.val_size"] == "10000" and params["trainer.max_epochs"] == "1"
        assert "val_error" in metrics and not [m for m in metrics if m.startswith("test")]
        assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation"}


@pytest.mark.slow
def test_finals_train_on_the_whole_training_subset_and_are_tested(studied):
    _, _, _, runs, _ = studied
    finals = _training_runs(runs, "final")
    assert sorted(int(r.data.params["seed"]) for r in finals) == [0, 0, 1, 1]
    for run in finals:
        assert run.info.status == "FINISHED"
        assert run.data.params["data.val_size"] == "0" and run.data.params["data.train_subset"] == "300"
        assert 0 <= run.data.metrics["test_error"] <= 100 and "val_error" not in run.data.metrics
        profiles = {i.tags[0].value for i in run.inputs.dataset_inputs}
        assert profiles == {"training", "test"}


@pytest.mark.slow
def test_the_study_is_one_parent_holding_its_stages(studied):
    _, _, _, runs, _ = studied
    (parent,) = [r for r in runs if r.data.tags.get("study.parent") == "true"]
    assert parent.info.status == "FINISHED" and parent.data.params["study.tune.trials"] == "2"
    stages = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in stages) == ["final", "final", "tune", "tune"]
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") in {s.info.run_id for s in stages}}
    assert len(children) == 8


@pytest.mark.slow
def test_running_the_study_again_trains_nothing(studied):
    store, _, _, before, again = studied
    _, after = all_runs(store)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)  # the same parent run too
    assert ": tune " not in again.stdout and ": final " not in again.stdout  # no stage was launched


def test_the_study_id_ignores_what_changes_nothing_trained():
    from lenet5.study import study_id_of, variants_of

    def study_id(*argv: str) -> str:
        study = [a.removeprefix("study.") for a in argv if a.startswith("study.")]
        run = [a for a in argv if not a.startswith("study.")]
        return study_id_of(load_study_config(study), variants_of(run), run)

    base = study_id("variant=none,optim_adam", "study.tune.trials=2")
    assert base == study_id("variant=none,optim_adam", "study.tune.trials=2", "trainer.compile=true", "trainer.progress_bar=false", "study.out=elsewhere", "tracking.experiment=x")
    assert base != study_id("variant=none,optim_adam", "study.tune.trials=3")
    assert base != study_id("variant=none,optim_adam", "study.tune.trials=2", "data.train_subset=300")


@pytest.mark.slow
def test_a_study_sharing_a_variant_reuses_its_tuning_and_finals(studied):
    store, folder, _, before, _ = studied
    done = study_cli("variant=none", *run_overrides(store), *STUDY, f"study.out={folder / 'report_paper'}", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    _, after = all_runs(store)
    new = {r.info.run_id for r in after} - {r.info.run_id for r in before}
    assert [r.data.tags.get("study.parent") for r in after if r.info.run_id in new] == ["true"]  # only its parent run


@pytest.mark.slow
def test_the_report_has_the_tuning_columns_and_plot(studied):
    _, folder, first, _, again = studied
    report = folder / "report"
    study_md = (report / "study.md").read_text(encoding="utf-8")
    header = [cell.strip() for cell in study_md.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["variant", "n", "test error % (mean ± std)"]
    assert {"selected lr", "val error %", "lr range", "edge", "tuning budget", "p TOST (Holm)", "verdict", "seeds needed"} <= set(header)
    assert "2 lr x 1 passes x 1 seed = 2 passes of 300 images" in study_md
    # Two rates are both ends of the range: whichever won is flagged.
    assert study_md.count("end: widen the range") == 2
    assert "Tuned recipe" in study_md and "Tuned recipe" in (report / "variants.md").read_text(encoding="utf-8")
    assert "\n\nVerdicts at margin ±0.1 pp, Holm-adjusted α = 0.05: 1 " in study_md  # one comparison, judged
    assert "Finals: seeds 0, 1; passes: 1, over 300 training images" in study_md  # STUDY's finals, on the subset
    assert (report / "tuning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"variants.md", "factors.md", "tuning.md", "tuning.csv", "tuning_trials.csv"} <= {p.name for p in report.iterdir()}
    assert "selected lr" in again.stdout  # the study's table is printed
    spent = re.search(r"Compute: ([\d.]+) (s|min|h) of training passes in all \(tuning ([\d.]+) (s|min|h), finals ([\d.]+) (s|min|h)", study_md)
    assert spent and all(float(spent.group(i)) > 0 for i in (1, 3, 5))  # both stages trained and were timed


@pytest.mark.slow
def test_the_report_follows_the_studys_variant_order_not_the_order_finals_started(studied, tmp_path):
    """Two launches interleave a study's finals (mnist-path's step 3 started before its step 2):
    the report's rows keep the order the study lists its variants in, the baseline still first."""
    from analysis.study_report import write_study_report
    from analysis.tuning import select_rates

    store, folder, _, runs, _ = studied
    finals = sorted(_training_runs(runs, "final"), key=lambda r: r.info.start_time)
    started = list(dict.fromkeys(r.data.tags["study.variant"] for r in finals))
    assert started == list(VARIANTS)  # paper's finals started first...
    study_order = started[::-1]  # ...so a study listing adam first has them out of its order
    trials = pd.read_csv(folder / "report" / "tuning_trials.csv")
    selection = select_rates(trials).set_index("variant").loc[study_order].reset_index()
    labels = {r.info.run_id: r.data.tags["study.variant"] for r in finals}
    write_study_report(store, EXPERIMENT, tmp_path, trials, selection, labels, "a reordered study")
    assert list(dict.fromkeys(pd.read_csv(tmp_path / "runs.csv")["variant"])) == study_order
    assert pd.read_csv(tmp_path / "variants.csv")["variant"].tolist() == ["paper", "paper optim=adam"]  # baseline first
    study_rows = [line.split("|")[1].strip() for line in (tmp_path / "study.md").read_text(encoding="utf-8").splitlines()[2:4]]
    assert [row.removesuffix(" ★") for row in study_rows] == ["paper", "paper optim=adam"]


def test_a_bad_study_setting_is_refused_in_one_line(capsys):
    assert main(["sweep=ofat", "study.tune.trails=3"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error:") and "trails" in line and "conf/study.yaml" in line
    assert main(["sweep=ofat", "optim.lr=0.1"]) == 2
    assert "study.tune.lr_range" in capsys.readouterr().err


def test_grids_are_log_spaced_over_each_optimizers_range():
    cfg = load_study_config([])
    for optim in ("sdlm", "sgd", "adam"):
        grid = lr_grid(cfg, optim)
        low, high = cfg.tune.lr_range[optim]
        assert len(grid) == cfg.tune.trials and grid[0] == low and grid[-1] == high
        ratios = [b / a for a, b in zip(grid, grid[1:])]
        assert max(ratios) == pytest.approx(min(ratios), rel=0.01)
    assert 5e-4 in lr_grid(cfg, "sdlm") and 1e-3 in lr_grid(cfg, "adam")  # each centred on the suite's own rate
    assert not math.isclose(lr_grid(cfg, "sgd")[0], lr_grid(cfg, "adam")[0])


@pytest.mark.slow
def test_the_committed_runs_csv_rebuilds_the_tables_without_the_store(studied, tmp_path):
    """What results/ablation/*/ commits: runs.csv alone gives back variants and factors as written."""
    _, folder, *_ = studied
    report = folder / "report"
    assert_tables_rebuild_from_runs_csv(report, tmp_path)
    assert "optim" in (tmp_path / "factors.csv").read_text(encoding="utf-8")  # the pair differing in optimizer
    assert not (tmp_path / "learning_curves.png").exists()  # needs the store


def test_training_time_counts_a_stacks_pass_once_and_gaps_between_launches_not_at_all():
    from analysis.runs import training_time_of

    passes = pd.DataFrame(
        [  # run, logged at (s), seconds, stack size
            ("a", 100.0, 100.0, 2), ("b", 100.0, 100.0, 2),  # one stack of two, pass 1: [0, 100]
            ("a", 250.0, 100.0, 2), ("b", 250.0, 100.0, 2),  # its pass 2, 50 s of evaluation later: [150, 250]
            ("c", 200.0, 150.0, 1),  # a single run beside it: [50, 200]
            ("c", 5000.0, 100.0, 1),  # resumed after a gap: [4900, 5000]
        ],
        columns=["run_id", "logged_at", "seconds", "stack_size"],
    )
    time = training_time_of(passes)
    assert time["core_s"] == 100 + 100 + 150 + 100  # two stack passes, two single ones
    assert time["wall_s"] == 250 + 100  # [0, 250] and [4900, 5000]
    assert time["passes"] == 6
