"""Resume: a killed job continues in the same MLflow run from its last completed pass.

Three pieces:

- **One owner per job.** A job is (experiment, config hash incl. seed). Its owner holds
  `JobClaim`: on a local store, an exclusive `flock` on a file beside the store (the kernel
  drops it when the process dies, kill -9 included, so "lock free" means "no live owner";
  it works across machines that share the folder over NFSv4); on every store, a heartbeat
  tag (`resume.heartbeat`, unix seconds, refreshed every `tracking.heartbeat_s`), which is
  what a server store on other machines has to go by: an unfinished run whose heartbeat is
  older than `STALE_HEARTBEATS` intervals has a dead owner.
- **A checkpoint per pass, committed with the pass's metrics.** `commit_pass` uploads the
  model's checkpoint (checkpoint.py: network, optimizer incl. SDLM's h_kk, schedule, the
  data order's and the curvature sample's generators; one format, whichever engine trains)
  at the start of every pass after the first and at the end of training, and then sends the
  pass's buffered metrics and the tags that point at the checkpoint in one `log_batch`: one
  transaction, so the store holds a pass's metrics exactly when it holds the checkpoint that
  follows them. A job killed mid-pass resumes from the last committed pass and logs the lost
  pass once, never twice. `PassCheckpoint` does this for Lightning's loop; the stack calls
  `commit_pass` itself.
- **Takeover.** A launch looks for an unfinished run of the same job before creating one:
  with a checkpoint it continues there, in either engine; without one (died in pass 1, or a
  checkpoint in Lightning's `.ckpt` format of earlier versions) it is marked KILLED and a
  new run starts.

Checkpoints alternate between two artifact slots (`checkpoints/slot0.pt`, `slot1.pt`) so a
kill during an upload never damages the one the tags point at; both, and the tag, are deleted
once the run is FINISHED (the trained network stays as the run's MLflow model).
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import lightning as L
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from . import checkpoint
from .config import ConfigError
from .identity import config_hash
from .store import sqlite_path

PASS_TAG = "resume.pass"  # last pass whose metrics and checkpoint are committed
CHECKPOINT_TAG = "resume.checkpoint"  # artifact path of that checkpoint
OWNER_TAG = "resume.owner"  # host:pid:token of the process training the run
HEARTBEAT_TAG = "resume.heartbeat"  # unix seconds of the owner's last sign of life
CHECKPOINT_DIR = "checkpoints"
#: An owner that missed this many heartbeats in a row is taken for dead.
STALE_HEARTBEATS = 3
#: Seconds between claiming a run on a server store and reading the claim back.
CLAIM_SETTLE_S = 2.0


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def lock_path(uri: str, experiment: str, job_hash: str) -> Path:
    """The lock file of a job on a local store: `<store folder>/.locks/<experiment>.<hash>.lock`."""
    if uri.startswith("sqlite:"):
        folder = sqlite_path(uri).resolve().parent
    else:
        folder = Path(uri.removeprefix("file://")).expanduser().resolve()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in experiment)
    return folder / ".locks" / f"{safe}.{job_hash}.lock"


class JobClaim:
    """This process's claim on one job: the lock (local store) and the heartbeat thread."""

    def __init__(self, uri: str, experiment: str, job_hash: str, heartbeat_s: float):
        self.heartbeat_s = heartbeat_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lock_file = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if is_local_store(uri):
            path = lock_path(uri, experiment, job_hash)
            path.parent.mkdir(exist_ok=True)
            handle = path.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise JobBusy(f"this job (config {job_hash}) is being trained by {holder} right now (lock {path}); wait for it or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(self.owner)
            handle.flush()
            self.lock_file = handle

    @classmethod
    def for_job(cls, cfg: Any) -> JobClaim:
        """The claim on the job `cfg` describes (its experiment and config hash), as every engine takes it."""
        return cls(str(cfg.tracking.uri), str(cfg.tracking.experiment), config_hash(cfg), cfg.tracking.heartbeat_s)

    def start_heartbeat(self, client: MlflowClient, run_id: str) -> None:
        """Tag `run_id` as ours and keep its heartbeat fresh until `release`."""
        client.log_batch(run_id, tags=[RunTag(OWNER_TAG, self.owner), RunTag(HEARTBEAT_TAG, str(int(time.time())))])

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))
                except Exception:  # a store hiccup must not kill training; the next beat retries
                    pass

        self._thread = threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lock_file is not None:
            self.lock_file.close()  # closing drops the flock
            self.lock_file = None


class JobBusy(ConfigError):
    """The job is being trained by a live process; this launch must not train it too."""


def owner_alive(run, heartbeat_s: float, now: float | None = None) -> bool:
    """Whether the process named in `run`'s owner tag still trains it, judged from the store
    alone (a server store, whose owner may be on another machine): its heartbeat is younger
    than `STALE_HEARTBEATS` intervals and, if it ran on this host, its pid still exists."""
    host, _, rest = run.data.tags.get(OWNER_TAG, "").partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
    beat = run.data.tags.get(HEARTBEAT_TAG)
    return beat is not None and (now or time.time()) - float(beat) < STALE_HEARTBEATS * heartbeat_s


def is_live(run, heartbeat_s: float) -> bool:
    """Whether `run` is RUNNING under an owner that still trains it (owner_alive)."""
    return run.info.status == "RUNNING" and owner_alive(run, heartbeat_s)


def unfinished_runs(client: MlflowClient, experiment_id: str, job_hash: str) -> list:
    """Runs of this job that never ended (RUNNING) or were interrupted (KILLED), newest first."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.config_hash = '{job_hash}'", order_by=["attributes.start_time DESC"])
    return [run for run in runs if run.info.status in ("RUNNING", "KILLED")]


def being_trained(client: MlflowClient, experiment_id: str, job_hash: str, heartbeat_s: float) -> bool:
    """Whether a live process, this launch or another, trains the job now, judged from the
    store alone (as a launch that has not claimed the job sees it)."""
    return any(is_live(run, heartbeat_s) for run in unfinished_runs(client, experiment_id, job_hash))


def has_checkpoint(run) -> bool:
    """Whether `run` holds a checkpoint this version can continue from (checkpoint.py's format)."""
    return run.data.tags.get(CHECKPOINT_TAG, "").endswith(checkpoint.SUFFIX)


def claim_run(client: MlflowClient, claim: JobClaim, experiment_id: str, job_hash: str, resume: bool = True):
    """The unfinished run this job continues in (or None for a fresh run), claimed for `claim`.

    Raises JobBusy when a live owner trains the job. Dead unfinished runs without a
    checkpoint (all of them, with `resume` false) are marked KILLED, so no ghost stays RUNNING.
    """
    resumable = None
    for run in unfinished_runs(client, experiment_id, job_hash):
        alive = claim.lock_file is None and is_live(run, claim.heartbeat_s)
        if alive:
            raise JobBusy(
                f"this job (config {job_hash}) is being trained in run {run.info.run_id} by "
                f"{run.data.tags.get(OWNER_TAG, 'a process')} (heartbeat within {STALE_HEARTBEATS * claim.heartbeat_s:.0f} s)"
            )
        if resume and resumable is None and has_checkpoint(run):
            resumable = run
        elif run.info.status == "RUNNING":
            reason = "its process died before a checkpoint" if CHECKPOINT_TAG not in run.data.tags else "its checkpoint is in an older format"
            client.set_tag(run.info.run_id, "failure_reason", f"{reason}; the job was started again")
            client.set_terminated(run.info.run_id, "KILLED")
    if resumable is None:
        return None
    client.set_tag(resumable.info.run_id, OWNER_TAG, claim.owner)
    if claim.lock_file is None:  # no lock: two launches may claim at once; the last writer wins
        time.sleep(CLAIM_SETTLE_S)
        if client.get_run(resumable.info.run_id).data.tags.get(OWNER_TAG) != claim.owner:
            raise JobBusy(f"run {resumable.info.run_id} of this job was just taken over by another launch")
    client.update_run(resumable.info.run_id, status="RUNNING")
    return resumable


def yield_to_earlier_launch(client: MlflowClient, claim: JobClaim, experiment_id: str, job_hash: str, run_id: str) -> None:
    """On a store without the lock (a server), two launches of a new job can each create a
    run; after one heartbeat's settling time the earliest live run keeps the job and the
    others delete their (still empty) run and raise JobBusy."""
    if claim.lock_file is not None:
        return
    time.sleep(CLAIM_SETTLE_S)
    live = [r for r in unfinished_runs(client, experiment_id, job_hash) if r.info.status == "RUNNING" and (r.info.run_id == run_id or owner_alive(r, claim.heartbeat_s))]
    first = min(live, key=lambda r: (r.info.start_time, r.info.run_id))
    if first.info.run_id != run_id:
        claim.release()
        client.delete_run(run_id)
        raise JobBusy(f"this job (config {job_hash}) was launched twice at once; run {first.info.run_id} trains it")


def download_checkpoint(client: MlflowClient, run, folder: str) -> str:
    """The local path of `run`'s last committed checkpoint."""
    return client.download_artifacts(run.info.run_id, run.data.tags[CHECKPOINT_TAG], folder)


def load_checkpoint(client: MlflowClient, run) -> checkpoint.Checkpoint:
    """The checkpoint (checkpoint.py) that `run` last committed, checked against its pass tag."""
    with tempfile.TemporaryDirectory() as scratch:
        state = checkpoint.load(download_checkpoint(client, run, scratch))
    if state["pass"] != int(run.data.tags[PASS_TAG]):
        raise ConfigError(f"run {run.info.run_id}: its checkpoint is of pass {state['pass']}, its {PASS_TAG} tag says {run.data.tags[PASS_TAG]}")
    return state


def delete_checkpoints(client: MlflowClient, run_id: str) -> None:
    """Remove the run's checkpoint slots and the `resume.checkpoint` tag that names one
    (called once it is FINISHED, so its tags name no file that is gone; `resume.pass` stays,
    the passes it committed). A store whose artifact repository cannot delete keeps both,
    which costs space, not correctness."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        run = client.get_run(run_id)
        get_artifact_repository(run.info.artifact_uri).delete_artifacts(CHECKPOINT_DIR)
    except Exception:
        return
    if CHECKPOINT_TAG in run.data.tags:
        client.delete_tag(run_id, CHECKPOINT_TAG)


def commit_pass(client: MlflowClient, run_id: str, logger, completed: int, state: Callable[[], checkpoint.Checkpoint]) -> None:
    """Commit pass `completed` (1-based) of run `run_id`: the checkpoint `state()` returns
    (checkpoint.py) is uploaded to `checkpoints/slot<completed mod 2>.pt`; then `logger` (a
    `tracking.PassLogger` holding the pass's metrics) sends them, `checkpoint_s` and the tags
    pointing at the checkpoint in one `log_batch`. Killed anywhere in between, the store still
    points at the previous pass's slot, which this upload never touches."""
    slot = f"slot{completed % 2}{checkpoint.SUFFIX}"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, slot)
        checkpoint.save(state(), path)
        client.log_artifact(run_id, path, CHECKPOINT_DIR)
    # What resuming costs each pass (save + upload; `checkpoint_s`, MLflow step = pass).
    logger.log_metrics({"checkpoint_s": time.perf_counter() - started}, step=completed)
    logger.commit([RunTag(PASS_TAG, str(completed)), RunTag(CHECKPOINT_TAG, f"{CHECKPOINT_DIR}/{slot}")])


class PassCheckpoint(L.Callback):
    """Commits each completed pass of a `LeNet5Module`: its checkpoint first, then the pass's
    metrics and the checkpoint's tags in one `log_batch` (see the module docstring).

    The trainer's logger must be a `PassLogger` (it holds the pass's metrics until here).
    Must come before any callback that draws random numbers or logs at a pass's start, so
    the checkpoint holds the state from before them.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.committed_pass = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.committed_pass = pl_module.first_pass  # a continued run's passes are committed already

    def _commit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        completed = pl_module.passes_done
        if completed <= self.committed_pass:
            return
        commit_pass(self.client, self.run_id, trainer.logger, completed, pl_module.training_state)
        self.committed_pass = completed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A run that FAILED (e.g. its loss became NaN) shows what its last pass logged; an
        # interrupted one does not, since its re-run logs that pass again.
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)):
            trainer.logger.commit([])
