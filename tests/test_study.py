"""A tiny real fair study (python -m lenet5.study) in subprocesses, on a real MLflow store:
2 variants x 2 learning rates x 1 pass on 300 images, selected on the last 10,000 training
images, finals over 2 seeds; then the same command again, and a second study sharing a variant."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from lenet5.config import PROJECT_DIR
from lenet5.study import load_study_config, lr_grid, main, refined_rates

from .helpers import assert_tables_rebuild_from_runs_csv, fresh_store, small_overrides

EXPERIMENT = "fair"
VARIANTS = {"paper": "sdlm", "paper optim=adam": "adam"}
STUDY = ["study.tune.trials=2", "study.tune.passes=1", "study.final.seeds=[0,1]", "study.final.passes=1"]
#: Seeds on demand, planned from the 2 pilot seeds: every variant gets exactly 3.
GROW = ["study.final.min_seeds=3", "study.final.max_seeds=3"]


def study_cli(*args: str, cwd, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lenet5.study", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{PROJECT_DIR / 'src'}{os.pathsep}{PROJECT_DIR}"},
    )  # fmt: skip


def study_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`lenet5.study.main(args)` in this process, from `cwd`, its output captured. The run.py
    launches it makes are still subprocesses; what is saved is the study process's own start
    (imports and store, several seconds), which one real `python -m lenet5.study` launch in the
    fixture still pays."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["lenet5.study", *args], code, out.getvalue(), err.getvalue())


def run_overrides(store: str) -> list[str]:
    return small_overrides(store, EXPERIMENT, subset=300, test_subset=300, passes=None)  # a study sets each stage's passes


def all_runs(store: str):
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """Four launches on one store: the grid alone; the same study refined (the default), as a
    real `python -m lenet5.study` process; that command again, with settings that change nothing
    trained; and its finals grown from the 2 pilot seeds to the 3 that study.final.min_seeds asks
    of every variant."""
    folder = tmp_path_factory.mktemp("study")
    store = fresh_store(folder)
    command = ["variant=none,optim_adam", *run_overrides(store), *STUDY, f"study.out={folder / 'report'}"]
    grid = study_in_process(*command, "study.tune.refine=false", f"study.out={folder / 'report_grid'}", cwd=folder)
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    _, after_grid = all_runs(store)
    first = study_cli(*command, cwd=folder)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _, after_first = all_runs(store)
    # Again, with settings that change nothing trained (as a user resuming on another machine
    # might): still the same study, so no parent run and no training run is added.
    again = study_in_process(*command, "trainer.compile=false", f"study.out={folder / 'report_again'}", cwd=folder)
    assert again.returncode == 0, again.stderr[-3000:]
    _, after_again = all_runs(store)
    grown = study_in_process(*command, *GROW, f"study.out={folder / 'report_grown'}", cwd=folder)
    assert grown.returncode == 0, grown.stdout[-3000:] + grown.stderr[-3000:]
    _, after_grown = all_runs(store)
    return Launches(store, folder, first, after_first, again, after_again, grown, after_grid, after_grown)


class Launches(typing.NamedTuple):
    store: str
    folder: Path
    first: subprocess.CompletedProcess
    after_first: list
    again: subprocess.CompletedProcess
    after_again: list
    grown: subprocess.CompletedProcess
    after_grid: list
    after_grown: list


def _training_runs(runs, stage):
    return [r for r in runs if r.data.tags.get("stage") == stage and "config_hash" in r.data.tags]


def _parent(runs, refined: bool):
    """The study's parent run of the grid-only launch (refined=False) or of the refined study."""
    (parent,) = [
        r for r in runs if r.data.tags.get("study.parent") == "true" and r.data.params["study.tune.refine"] == str(refined)
        and "study.final.min_seeds" in r.data.params and r.data.params["study.final.min_seeds"] == "None"
    ]  # fmt: skip
    return parent


def _finals_of(runs, parent):
    member = f"study.member.{parent.data.tags['study_id']}"
    return [r for r in _training_runs(runs, "final") if r.data.tags.get(member) == "true"]


def _new(after, before):
    known = {r.info.run_id for r in before}
    return [r for r in after if r.info.run_id not in known]


@pytest.mark.slow
def test_each_variant_gets_the_argmin_of_all_its_tuning_runs(studied):
    """The grid, then exactly the documented refinement (the midpoints to the grid selection's
    neighbours), and the final selection over all of them, straight from the store."""
    runs = studied.after_first
    cfg = load_study_config([o.removeprefix("study.") for o in STUDY])
    tune, finals = _training_runs(runs, "tune"), _finals_of(runs, _parent(runs, refined=True))
    assert len(tune) == 2 * (2 + 1) and len(finals) == 4  # a 2-rate grid's selection is at an end: one midpoint
    for label, optim in VARIANTS.items():
        mine = [r for r in tune if r.data.tags["study.variant"] == label]
        rates = {float(r.data.params["optim.lr"]): r for r in mine}
        score = lambda lr: (rates[lr].data.metrics["val_error"], lr)  # noqa: E731 - lowest error, ties to the smaller rate
        grid = lr_grid(cfg, optim)
        assert sorted(rates) == sorted(grid + refined_rates(grid, min(grid, key=score)))
        assert sorted(r.data.tags["tune.round"] for r in mine) == ["grid", "grid", "refine"]
        best = min(rates, key=score)
        own_finals = [r for r in finals if r.data.tags["study.variant"] == label]
        assert {float(r.data.params["optim.lr"]) for r in own_finals} == {best}
        assert {r.data.tags["tune.selected.optim.lr"] for r in own_finals} == {f"{best:g}"}
        assert {r.data.tags["tune.selected_run_ids"] for r in own_finals} == {rates[best].info.run_id}
        assert {r.data.tags["tune.id"] for r in own_finals} == {r.data.tags["tune.id"] for r in mine}
        assert {r.data.tags["tune.budget_passes"] for r in own_finals} == {"3"}  # 3 rates x 1 pass x 1 seed


def test_refinement_tries_the_midpoints_to_the_selections_neighbours():
    grid = [5e-06, 5e-05, 0.0005, 0.005]
    assert refined_rates(grid, 5e-05) == [1.58e-05, 0.000158]
    assert refined_rates(grid, 5e-06) == [1.58e-05]  # an end has one neighbour
    assert refined_rates(grid, 0.005) == [0.00158]


@pytest.mark.slow
def test_refining_a_study_trains_its_midpoints_and_only_the_finals_whose_selection_moved(studied):
    before, after = studied.after_grid, studied.after_first
    added = [r for r in _new(after, before) if "config_hash" in r.data.tags]
    assert sorted(r.data.tags["tune.round"] for r in added if r.data.tags["stage"] == "tune") == ["refine", "refine"]
    grid_finals = _finals_of(before, _parent(before, refined=False))
    refined_finals = _finals_of(after, _parent(after, refined=True))
    for label in VARIANTS:
        was = {r.data.params["optim.lr"] for r in grid_finals if r.data.tags["study.variant"] == label}
        now = {r.data.params["optim.lr"] for r in refined_finals if r.data.tags["study.variant"] == label}
        new_finals = [r for r in added if r.data.tags["stage"] == "final" and r.data.tags["study.variant"] == label]
        # A final is its config hash: one at an unchanged rate is the grid study's run, reused.
        assert len(new_finals) == (0 if now == was else 2), (label, was, now)


@pytest.mark.slow
def test_tuning_runs_never_saw_the_test_set(studied):
    """data.test=false: the test split is not loaded, so no test metric or test input exists
    in a tuning run; the selection reads val_error, on the last 10,000 training images."""
    for run in _training_runs(studied.after_first, "tune"):
        params, metrics = run.data.params, run.data.metrics
        assert params["data.test"] == "False" and params["data.val_size"] == "10000" and params["trainer.max_epochs"] == "1"
        assert "val_error" in metrics and not [m for m in metrics if m.startswith("test")]
        assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation"}


@pytest.mark.slow
def test_finals_train_on_the_whole_training_subset_and_are_tested(studied):
    runs = studied.after_first
    finals = _finals_of(runs, _parent(runs, refined=True))
    assert sorted(int(r.data.params["seed"]) for r in finals) == [0, 0, 1, 1]
    for run in finals:
        assert run.info.status == "FINISHED"
        assert run.data.params["data.val_size"] == "0" and run.data.params["data.train_subset"] == "300"
        assert 0 <= run.data.metrics["test_error"] <= 100 and "val_error" not in run.data.metrics
        profiles = {i.tags[0].value for i in run.inputs.dataset_inputs}
        assert profiles == {"training", "test"}


@pytest.mark.slow
def test_the_study_is_one_parent_holding_its_stages(studied):
    runs = studied.after_grid
    parent = _parent(runs, refined=False)
    assert parent.info.status == "FINISHED" and parent.data.params["study.tune.trials"] == "2"
    stages = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in stages) == ["final", "final", "tune", "tune"]
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") in {s.info.run_id for s in stages}}
    assert len(children) == 8


@pytest.mark.slow
def test_running_the_study_again_trains_nothing(studied):
    assert _new(studied.after_again, studied.after_first) == []  # not even a parent run
    assert ": tune " not in studied.again.stdout and ": final " not in studied.again.stdout  # no stage was launched


@pytest.mark.slow
def test_growing_a_study_trains_only_the_new_seeds_and_its_verdicts_follow(studied):
    """The pilot (seeds 0, 1) plans 3 seeds for every variant (min_seeds = max_seeds = 3):
    the grown launch trains seed 2 of each variant and nothing else, and its report's verdicts
    are those of the 3 seeds' paired differences."""
    from analysis.stats import MARGINS, verdicts

    added = _new(studied.after_grown, studied.after_again)
    trained = sorted((r.data.tags["study.variant"], r.data.params["seed"]) for r in added if "config_hash" in r.data.tags)
    assert trained == [("paper", "2"), ("paper optim=adam", "2")]
    assert "seeds" in studied.grown.stdout and "verdict" in studied.grown.stdout  # the plan is printed
    pilot = pd.read_csv(studied.folder / "report" / "variants.csv").set_index("variant")
    grown = pd.read_csv(studied.folder / "report_grown" / "variants.csv").set_index("variant")
    assert pilot["n"].tolist() == [2, 2] and grown["n"].tolist() == [3, 3]
    finals = [r for r in studied.after_grown if r.data.tags.get("stage") == "final" and "config_hash" in r.data.tags]
    errors = {
        (r.data.tags["study.variant"], int(r.data.params["seed"])): r.data.metrics["test_error"]
        for r in finals if r.data.params["optim.lr"] == r.data.tags["tune.selected.optim.lr"]
        and r.data.tags.get(f"study.member.{_grown_study_id(studied.after_grown)}") == "true"
    }  # fmt: skip
    differences = {"paper optim=adam": [errors[("paper optim=adam", s)] - errors[("paper", s)] for s in (0, 1, 2)]}
    expected = verdicts(differences, MARGINS["mnist"]).loc["paper optim=adam", "verdict"]
    assert grown.loc["paper optim=adam", "verdict"] == expected


def _grown_study_id(runs) -> str:
    (parent,) = [r for r in runs if r.data.tags.get("study.parent") == "true" and r.data.params.get("study.final.min_seeds") == "3"]
    return parent.data.tags["study_id"]


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
    store, folder = studied.store, studied.folder
    done = study_in_process("variant=none", *run_overrides(store), *STUDY, f"study.out={folder / 'report_paper'}", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    _, after = all_runs(store)
    assert [r.data.tags.get("study.parent") for r in _new(after, studied.after_grown)] == ["true"]  # only its parent run


@pytest.mark.slow
def test_the_report_has_the_tuning_columns_and_plot(studied):
    folder, again = studied.folder, studied.again
    report = folder / "report"
    study_md = (report / "study.md").read_text(encoding="utf-8")
    header = [cell.strip() for cell in study_md.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["variant", "n", "test error % (mean ± std)"]
    assert {"selected lr", "val error %", "refinement", "lr range", "edge", "tuning budget", "p TOST (Holm)", "verdict", "seeds needed"} <= set(header)
    assert "3 lr x 1 passes x 1 seed = 3 passes of 300 images" in study_md
    tuning = pd.read_csv(report / "tuning.csv")
    moved = (tuning["selected_lr"] != tuning["grid_lr"]).sum()
    assert study_md.count("| kept ") + study_md.count("| moved from ") == 2 and study_md.count("| moved from ") == moved
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

    store, folder, runs = studied.store, studied.folder, studied.after_first
    finals = sorted(_finals_of(runs, _parent(runs, refined=True)), key=lambda r: r.info.start_time)
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


@pytest.mark.parametrize(
    "argument, named",
    [
        ("study.final.min_seeds=1", "study.final.min_seeds=1"),
        ("study.final.max_seeds=12", "study.final.max_seeds=12"),  # without min_seeds
        ("study.final.seeds=[0,0,1]", "study.final.seeds=[0, 0, 1]"),
        ("study.tune.seeds=[-1]", "study.tune.seeds=[-1]"),
        ("study.margin=-0.1", "study.margin=-0.1"),
        ("study.margin=abc", "study.margin"),
        ("study.plan=maybe", "study.plan"),
        ("study.tune.refine=sometimes", "study.tune.refine"),
        ("study.tune.trials=1", "study.tune.trials=1"),
        ("study.tune.val_size=60000", "study.tune.val_size=60000"),
        ("study.final.passes=0", "study.final.passes=0"),
        ("study.tune.lr_range.rmsprop=[1e-4,1e-2]", "rmsprop"),
        ("study.tune.lr_range.sdlm=[1e-2,1e-4]", "study.tune.lr_range.sdlm"),
        ("--resume", "--resume"),
        ("model.pool=median", "model.pool=median"),
        ("hydra/launcher=stacked", None),  # valid alone: the next case's option is what is refused
    ],
)
def test_every_bad_study_setting_is_refused_in_one_line_before_anything_runs(argument, named, capsys, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # not made: a refused study must not make it
    if named is None:
        argument, named = "hydra.launcher.models_per_process=0", "models_per_process"
        arguments = ["variant=none", "hydra/launcher=stacked", argument]
    else:
        arguments = ["variant=none", argument]
    assert main([*arguments, f"tracking.uri={store}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error:") and named in line, line
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded


def test_help_prints_the_studys_usage_and_no_arguments_starts_nothing(capsys):
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m lenet5.study")
    assert "sweep=ofat" in shown and "min_seeds: null" in shown and "trials: 7" in shown  # presets, settings, defaults
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("usage:") and captured.err.startswith("error: no variants given")


def test_planning_waits_for_a_pilot_another_launch_trains_and_not_for_a_dead_one(tmp_path, capsys):
    """Seeds are planned from every variant's pilot: a launch that finds a pilot final RUNNING
    under a live owner (another launch of the study) waits until it finishes; one whose owner
    stopped beating is not waited for. No training: the other launch is played by a thread."""
    import socket
    import threading
    import time

    from lenet5.resume import HEARTBEAT_TAG, OWNER_TAG
    from lenet5.study import Study, variants_of

    store = fresh_store(tmp_path)
    run_args = ["variant=none", *run_overrides(store), "tracking.heartbeat_s=0.2"]
    study = Study(load_study_config([]), variants_of(run_args), run_args, [], "custom")
    client = mlflow.MlflowClient(store)
    owner = f"{socket.gethostname()}:{os.getpid()}:other-launch"

    def pilot_run(seed: int, heartbeat: float):
        (job,) = study.final_jobs(study.variants[0], {"selected_lr": 1e-3}, [seed]).values()
        tags = {"config_hash": job.config_hash, OWNER_TAG: owner, HEARTBEAT_TAG: str(heartbeat)}
        return job, client.create_run(study.experiment_id, tags=tags).info.run_id

    job, run_id = pilot_run(0, time.time())

    def other_launch() -> None:  # beats for 1.5 s, then finishes the run
        for _ in range(15):
            client.set_tag(run_id, HEARTBEAT_TAG, str(time.time()))
            time.sleep(0.1)
        client.log_metric(run_id, "test_error", 1.0)
        client.set_terminated(run_id, "FINISHED")

    thread = threading.Thread(target=other_launch)
    thread.start()
    study.wait_for_others({"paper": {0: job}})
    thread.join()
    assert job.status == "finished" and job.run.info.run_id == run_id
    assert capsys.readouterr().out.count("waiting for the pilot finals of paper") == 1  # said once, not every poll

    dead, _ = pilot_run(1, time.time() - 60)  # 60 s without a heartbeat: 300 intervals of 0.2 s
    study.wait_for_others({"paper": {1: dead}})
    assert dead.status == "missing" and "waiting" not in capsys.readouterr().out


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
    report = studied.folder / "report"
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
