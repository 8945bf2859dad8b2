"""Stacked training (stacked.py): K models in one process, each recorded and trained as if alone.

Each case trains three jobs through the ordinary single-run path (`train`, Lightning) and
the same three as one stack (`train_stack`), into one real store, and compares run by run.
Equality is to float32 rounding (stacked.py's docstring says why it cannot be bit for bit):
the logged error rates within one image, losses and weights within a small fraction of how
far training moved them. A stack that mixed up models, data orders, rates or curvature
samples misses by tens of images and by the whole distance trained.
"""

from __future__ import annotations

import mlflow
import pytest
import torch

from lenet5.grouping import partition, stack_key
from lenet5.jobs import prepare, train, train_stack

from .helpers import compose, fresh_store, history, small_overrides, weights

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

TRAIN, TEST = 300, 300
#: (shared overrides, each job's own, passes)
CASES = {
    # SDLM as the paper preset trains it (h_kk before each pass and the running average per batch).
    "sdlm_seeds": (["experiment=paper", "optim.curvature_samples=100"], [["seed=0"], ["seed=1"], ["seed=2"]], 2),
    "sgd_rates": (
        ["experiment=paper", "variant=optim_sgd", "data.batch_size=16"],
        [["optim.lr=0.0005"], ["optim.lr=0.001"], ["optim.lr=0.002"]], 2,
    ),
    "adam_seeds_and_rates": (
        ["experiment=modern", "data.batch_size=32"],
        [["seed=0", "optim.lr=0.001"], ["seed=1", "optim.lr=0.003"], ["seed=2", "optim.lr=0.001"]], 2,
    ),
}  # fmt: skip


def job_configs(store: str, experiment: str, shared: list[str], jobs: list[list[str]], passes: int):
    small = small_overrides(store, experiment, subset=TRAIN, test_subset=TEST, passes=passes)
    return [compose(*shared, *small, *own) for own in jobs]


@pytest.fixture(scope="module", params=list(CASES))
def alone_and_stacked(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    store = fresh_store(folder)
    shared, jobs, passes = CASES[request.param]
    alone = [train(cfg)["run_id"] for cfg in job_configs(store, "alone", shared, jobs, passes)]
    stacked_cfgs = job_configs(store, "stacked", shared, jobs, passes)
    stacked = [r["run_id"] for r in train_stack(stacked_cfgs)]
    client = mlflow.MlflowClient(store)
    initial = [{n: p.detach().clone() for n, p in prepare(c, check_tracking=False)[1].model.named_parameters()} for c in stacked_cfgs]
    return store, client, [client.get_run(r) for r in alone], [client.get_run(r) for r in stacked], initial, passes


@pytest.mark.slow
def test_each_stacked_run_logs_what_its_single_run_logs(alone_and_stacked):
    _, client, alone, stacked, _, passes = alone_and_stacked
    for a, s in zip(alone, stacked):
        assert s.info.status == "FINISHED" and s.data.tags["stack.size"] == "3"
        # Every metric at the same steps, checkpoint_s included: a stack commits each pass as a single run does.
        assert set(s.data.metrics) == set(a.data.metrics)
        for key in s.data.metrics:
            assert [step for step, _ in history(client, s.info.run_id, key)] == [step for step, _ in history(client, a.info.run_id, key)], key
        differing = {k for k in s.data.params.keys() | a.data.params.keys() if s.data.params.get(k) != a.data.params.get(k)}
        assert differing == {"tracking.experiment"}  # this test's own two experiments
        for tag in ("config_hash", "variant_hash", "seed", "ablation.optim", "ablation.pool"):
            assert s.data.tags[tag] == a.data.tags[tag], tag
        assert s.info.run_name == a.info.run_name
        artifacts = {f.path for f in client.list_artifacts(s.info.run_id)}
        assert artifacts == {f.path for f in client.list_artifacts(a.info.run_id)}  # checkpoints gone in both once FINISHED


@pytest.mark.slow
def test_each_stacked_model_trains_as_it_would_alone(alone_and_stacked):
    store, client, alone, stacked, initial, passes = alone_and_stacked
    for a, s, start in zip(alone, stacked, initial):
        a_id, s_id = a.info.run_id, s.info.run_id
        assert history(client, s_id, "lr") == history(client, a_id, "lr")
        for key, images in (("train_error", TRAIN), ("test_error", TEST)):
            for (_, x), (_, y) in zip(history(client, a_id, key), history(client, s_id, key)):
                assert abs(x - y) <= 100.0 / images + 1e-9, (key, x, y)
        for (_, x), (_, y) in zip(history(client, a_id, "train_loss"), history(client, s_id, "train_loss")):
            assert y == pytest.approx(x, rel=1e-3)
        w_alone, w_stacked = weights(store, a), weights(store, s)
        moved = torch.cat([(w_alone[n] - start[n]).flatten() for n in start]).norm()
        missed = torch.cat([(w_stacked[n] - w_alone[n]).flatten() for n in start]).norm()
        assert moved > 0.1, moved  # training moved the weights: the comparison below means something
        assert missed < 1e-2 * moved, (missed, moved)


@pytest.mark.slow
def test_sdlm_telemetry_of_a_stacked_model_is_its_own(alone_and_stacked):
    _, client, alone, stacked, _, passes = alone_and_stacked
    if alone[0].data.params["optim.name"] != "sdlm":
        pytest.skip("SDLM only")
    keys = [k for k in alone[0].data.metrics if k.startswith("sdlm/step_")]
    assert keys
    for a, s in zip(alone, stacked):
        for key in keys:
            # Pass 1's steps come from the initial weights on the model's own curvature sample.
            (_, x), (_, y) = history(client, a.info.run_id, key)[0], history(client, s.info.run_id, key)[0]
            assert y == pytest.approx(x, rel=1e-4), key
        assert {f.path for f in client.list_artifacts(s.info.run_id)} >= {"sdlm_steps_pass01.png", f"sdlm_steps_pass{passes:02d}.png"}


def test_jobs_differing_in_seed_and_rate_share_a_stack_and_others_do_not():
    base = ["experiment=paper", "data.train_subset=100"]
    cfgs = [
        compose(*base, "seed=0"),
        compose(*base, "seed=1", "optim.lr=0.001"),
        compose(*base, "model.pool=max"),
        compose(*base, "seed=2", "optim.mu=0.05"),
        compose(*base, "data.batch_size=8"),
        compose(*base, "seed=3"),
    ]
    assert stack_key(cfgs[0]) == stack_key(cfgs[1]) != stack_key(cfgs[2])
    assert partition(cfgs, 16) == [[0, 1, 3, 5], [2], [4]]
    assert partition(cfgs, 3) == [[0, 1, 3], [2], [4], [5]]
    assert partition(cfgs, 1) == [[i] for i in range(6)]


@pytest.mark.slow
def test_a_stack_killed_before_its_first_commit_is_trained_again_in_new_runs(store):
    """Runs with no checkpoint yet (killed in pass 1) have nothing to continue from: the next
    launch marks them KILLED and starts anew (tests/test_stacked_resume.py: killed later)."""
    from lenet5.identity import config_hash, run_tags
    from lenet5.tracking import get_or_create_experiment

    cfgs = job_configs(store, "killed", ["experiment=modern", "data.batch_size=32"], [["seed=0"], ["seed=1"]], 1)
    client = mlflow.MlflowClient(store)
    experiment_id = get_or_create_experiment(client, "killed", None)
    # What a stack killed in its first pass leaves: RUNNING runs whose owner is gone.
    dead = [client.create_run(experiment_id, tags={**run_tags(c), "resume.owner": "elsewhere:1:x"}).info.run_id for c in cfgs]
    results = train_stack(cfgs)
    for cfg, old, result in zip(cfgs, dead, results):
        assert client.get_run(old).info.status == "KILLED"
        new = client.get_run(result["run_id"])
        assert new.info.run_id != old and new.info.status == "FINISHED"
        assert new.data.tags["config_hash"] == config_hash(cfg) and new.data.tags["stack.size"] == "2"
