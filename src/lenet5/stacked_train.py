"""Jobs of one stack (grouping.py) trained in one process and recorded as one MLflow run each.

Each run gets what `train.train_single` records for a single run: the config as params, the dataset
inputs, the layer table, the per-pass metrics under the same names and steps (`train_loss`,
`train_error`, `lr`, `test_error`/`val_error`, `epoch_time_s`, `train_images_per_s`, SDLM's
`sdlm/*` telemetry and step histograms), the test artifacts and the trained network, the
same tags (config hash, ablation factors, sweep parent), plus `stack.size` and `stack.id`
(which runs trained together). Differences: `epoch_time_s` is the time of the stack's pass
and `train_images_per_s` each model's own images over it.

Resume, as for a single run (resume.py): each pass is committed per member, in the member's
own run: its own checkpoint (`StackedTraining.member_state`, in checkpoint.py's format, the
one a single run saves) is uploaded as `checkpoints/slot<pass mod 2>.pt`, then
the pass's metrics, `checkpoint_s` and the tags `resume.pass`/`resume.checkpoint` go in one
`log_batch`. The next launch of the same jobs (the same sweep, or any launch of the job)
skips FINISHED jobs (in a sweep), holds each other job's `JobClaim` (a job a live process
trains is skipped, with one line) and continues every unfinished run that has a checkpoint,
in that run (it keeps the `stack.id` it started with), printing
`resume: run <id> from pass k of N`; runs without one (killed in pass 1) are marked KILLED and
start anew. Members are stacked by the pass they continue from: one stack steps its models
together and no committed pass is trained twice into a run, so members stopped at different
passes (a kill between two members' commits) train as separate stacks, one after the other.
A checkpoint holds one model, not the stack, so it loads into any stack of jobs at its pass,
or alone: a single-run launch of the job (`jobs.train`) continues it in Lightning's loop,
and a job killed there continues in a stack. Resumed alone or in another stack, a model
agrees with the uninterrupted stack to float32 rounding (stacked.py); resumed as the same
stack, to the last digit on the CPU.

A model whose loss becomes NaN ends FAILED alone (with the passes before committed); the
others train on. A FAILED run is not resumed: the next launch trains the job anew.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt

from .callbacks import step_telemetry
from .checkpoint import Checkpoint
from .config import ConfigError
from .engine import Job, training_device, use_deterministic_kernels
from .losses import check_loss_finite
from .figures import sdlm_steps_figure
from .model.counts import counts_table
from .recording import job_result, outcome_line, record_outcome, record_setup
from .resume import (
    JobBusy, JobClaim, commit_pass, delete_checkpoints, load_checkpoint,
)  # fmt: skip
from .sdlm import PAPER_PASS1_STEPS
from .stacked import StackedTraining
from .tracking import TrackedRun, end_run, open_run


@dataclass
class _Member:
    """One job of the stack as this launch trains it."""

    index: int  # in the launch's list of jobs
    job: Job
    run: TrackedRun
    claim: JobClaim
    state: Checkpoint | None  # its last committed checkpoint, or None: from the start

    @property
    def start_pass(self) -> int:
        return self.state["pass"] if self.state is not None else 0


def train_stacked(jobs: list[Job]) -> list[dict[str, Any]]:
    """The `engine.Engine` of the stack: `jobs` (equal `grouping.stack_key`: they share one
    data module, the first job's) side by side, in stacks of equal start pass."""
    trainer = jobs[0].module.config.trainer  # equal in a stack
    device = training_device(trainer)
    use_deterministic_kernels(trainer.deterministic)
    datamodule = jobs[0].datamodule
    datamodule.setup()
    datamodule.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in datamodule.splits.items()}
    stack_tags = {"stack.size": str(len(jobs)), "stack.id": uuid.uuid4().hex[:10]}
    results: dict[int, dict[str, Any]] = {}
    members: list[_Member] = []
    try:
        for i, job in enumerate(jobs):
            cfg, name = job.cfg, job.name
            try:
                claim = JobClaim.for_job(cfg)
                run = open_run(cfg, name, {**job.sweep_tags, **stack_tags}, claim)
            except JobBusy as err:
                print(f"error: {' '.join(str(err).split())}")
                results[i] = job_result("", name, float("nan"), cfg)
                continue
            member = _Member(i, job, run, claim, None)
            if run.resumed is not None:
                try:
                    member.state = load_checkpoint(run.client, run.resumed)
                except ConfigError as err:  # its checkpoint disagrees with its tags: say so, train the others
                    claim.release()
                    print(f"error: {err}")
                    results[i] = job_result(run.run_id, name, float("nan"), cfg)
                    continue
                print(f"resume: run {run.run_id} from pass {member.start_pass} of {cfg.trainer.max_epochs}")
            else:
                record_setup(run, cfg, datamodule, counts_table(job.module.model))
            members.append(member)
        live: set[int] = set()
        for group in groups_by_pass(members):
            print(f"stack of {len(group)}: {', '.join(m.job.name for m in group)}" + (f" (from pass {group[0].start_pass})" if group[0].start_pass else ""))
            live |= _train(datamodule, device, group)
        for member in members:
            i, (cfg, name), run = member.index, (member.job.cfg, member.job.name), member.run
            if i not in live:
                results[i] = job_result(run.run_id, name, float("nan"), cfg)
                continue
            try:
                test_error = record_outcome(run, cfg, member.job.module, datamodule)
            except Exception as err:
                end_run(run, err)
                results[i] = job_result(run.run_id, name, float("nan"), cfg)
                continue
            end_run(run)
            delete_checkpoints(run.client, run.run_id)
            results[i] = job_result(run.run_id, name, test_error, cfg)
            print(f"{outcome_line(run, name, cfg, test_error)} (run {run.run_id})")
    except BaseException as err:
        for member in members:
            if member.index not in results:
                end_run(member.run, err)
        raise
    finally:
        for member in members:
            member.claim.release()
    return [results[i] for i in range(len(jobs))]


def groups_by_pass(jobs: list[_Member]) -> list[list[_Member]]:
    """The jobs in stacks of equal start pass, in order of their first job.

    One stack steps all its models together, and no committed pass may be trained twice into
    a run, so jobs that stopped at different passes (a kill between two members' commits, a
    member that started anew because its run had no checkpoint) train as separate stacks, one
    after the other, each from its own pass.
    """
    groups: dict[int, list[_Member]] = {}
    for job in jobs:
        groups.setdefault(job.start_pass, []).append(job)
    return list(groups.values())


def _train(datamodule, device, jobs: list[_Member]) -> set[int]:
    """Run the stack of `jobs` (all at one start pass) to its last pass, committing each pass
    of each member as a single run does (checkpoint, then metrics and `resume.*` tags in one
    `log_batch`); the members (their `index`) that trained to the end. A member whose
    loss became NaN ends FAILED, with no checkpoint of that pass."""
    training = StackedTraining([j.job.module for j in jobs], datamodule, device)
    if jobs[0].state is not None:
        training.load_member_states([j.state for j in jobs])
    live = set(range(len(jobs)))
    for result in training.passes():
        for k in sorted(live):
            run = jobs[k].run
            logger = run.lightning_logger()
            if result.sdlm_steps is not None:
                steps = result.sdlm_steps[k]
                logger.log_metrics(step_telemetry(steps), step=result.number)
                if result.number in (1, training.max_epochs):
                    figure = sdlm_steps_figure({layer: s for layer, (s, _) in steps.items()}, result.number, PAPER_PASS1_STEPS)
                    run.log_figure(figure, f"sdlm_steps_pass{result.number:02d}.png")
                    plt.close(figure)
            metrics = result.metrics[k]
            try:
                check_loss_finite(metrics["train_loss"], result.number)
            except FloatingPointError as err:
                logger.commit([])
                end_run(run, err)
                live.discard(k)
                continue
            logger.log_metrics(metrics, step=result.number)
            commit_pass(run.client, run.run_id, logger, result.number, lambda k=k: training.member_state(k))
    training.write_back()
    return {jobs[k].index for k in live}
