"""A store's runs as plain files, and back: studies that outlive the machine they run on.

    python -m lenet5.archive export --uri sqlite:////path/mlflow.db --experiment fair_mnist --to results/ablation/archive/fair_mnist
    python -m lenet5.archive import --uri sqlite:////path/mlflow.db --from results/ablation/archive/fair_mnist

A study takes tens of core-hours, longer than one session on one machine, and a new machine
starts with an empty store. Export writes each run of an experiment as one JSON file
(`runs/<origin>.json`: status, times, name, params, tags, every metric's history), and for a
run that is not finished (RUNNING or KILLED) with a committed checkpoint, that checkpoint
(`checkpoints/<origin>.pt`). Import recreates the runs in another store: a finished run is
found again by its config hash, so a study or sweep run against that store skips it; an
unfinished one is KILLED with its checkpoint, so the next launch of its job continues it from
its last committed pass, exactly as after a kill on the same machine (resume.py).

What does not travel: other artifacts (the trained network, figures), which stay in the store
that trained them, and the MLflow dataset inputs. Run ids are new in the importing store; each
imported run keeps its first id as the `archive.origin` tag, and tags that named another run of
the archive (`mlflow.parentRunId`, `tune.selected_run_ids`) name its new id; export writes them
back as origins, so exporting an imported store rewrites no file of the archive. Both directions
merge: export overwrites the files of the runs it finds and keeps the others (a store that
lacks a run never deletes it from the archive), and import skips every run whose origin the
store holds already, so importing twice adds nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .resume import CHECKPOINT_TAG, PASS_TAG
from .store import artifact_location
from .tracking import get_or_create_experiment, list_runs

ORIGIN_TAG = "archive.origin"
#: Tags that describe artifacts or records which do not travel with the archive.
LEFT_BEHIND_TAGS = {"mlflow.log-model.history"}
UNFINISHED = ("RUNNING", "KILLED")
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def origin_of(run: Any) -> str:
    """The id a run had in the store that first recorded it."""
    return run.data.tags.get(ORIGIN_TAG, run.info.run_id)


def _renamed(value: str, ids: dict[str, str]) -> str:
    """`value` with every run id that `ids` knows replaced by its image."""
    return RUN_ID.sub(lambda m: ids.get(m.group(0), m.group(0)), value)


def snapshot_run(
    client: MlflowClient, run_id: str, experiment: str, checkpoint_file: Path, origins: dict[str, str] | None = None, attempts: int = 10
) -> dict:
    """One run as a record, its checkpoint (an unfinished run's) copied to `checkpoint_file`;
    run ids in its tags are written as their runs' origins (`origins`: store id -> origin).

    A run still training commits a pass between our reads (metrics and tags in one batch, the
    checkpoint just before): the record is taken again until the run's pass and status are the
    same after the reads as before them, so its metrics, pass tag and checkpoint belong together
    and a continued run never logs a pass twice."""
    for _ in range(attempts):
        run = client.get_run(run_id)
        record = {
            "origin": origin_of(run),
            "experiment": experiment,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "params": dict(sorted(run.data.params.items())),
            "tags": {
                k: _renamed(v, origins or {}) for k, v in sorted(run.data.tags.items()) if k not in LEFT_BEHIND_TAGS and k != ORIGIN_TAG
            },
            # Every metric's whole history: [step, timestamp (ms), value], in logging order.
            "metrics": {
                key: [[m.step, m.timestamp, m.value] for m in client.get_metric_history(run_id, key)]
                for key in sorted(run.data.metrics)
            },
            "checkpoint": None,
        }
        if run.info.status in UNFINISHED and CHECKPOINT_TAG in run.data.tags:
            with tempfile.TemporaryDirectory() as scratch:
                shutil.copyfile(client.download_artifacts(run_id, run.data.tags[CHECKPOINT_TAG], scratch), checkpoint_file)
            record["checkpoint"] = checkpoint_file.name
        again = client.get_run(run_id)
        if (again.info.status, again.data.tags.get(PASS_TAG)) == (run.info.status, run.data.tags.get(PASS_TAG)):
            return record
    raise RuntimeError(f"run {run_id} committed a pass during each of {attempts} reads; export again")


def export_experiment(uri: str, experiment: str, folder: Path) -> dict[str, int]:
    """Write every active run of `experiment` in store `uri` under `folder`; returns counts
    ({"runs": n, "checkpoints": k}). Raises LookupError when the experiment does not exist."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"experiment '{experiment}' is not in {uri}")
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(exist_ok=True)
    counts = {"runs": 0, "checkpoints": 0}
    listed_runs = list_runs(client, found.experiment_id)
    origins = {run.info.run_id: origin_of(run) for run in listed_runs}
    for listed in listed_runs:
        origin = origins[listed.info.run_id]
        kept = folder / "checkpoints" / f"{origin}.pt"
        record = snapshot_run(client, listed.info.run_id, experiment, kept, origins)
        if record["checkpoint"]:
            counts["checkpoints"] += 1
        else:
            kept.unlink(missing_ok=True)  # finished since the last export: its checkpoint is spent
        (folder / "runs" / f"{origin}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        counts["runs"] += 1
    return counts


def import_archive(uri: str, folder: Path, artifact_root: str | None = None) -> dict[str, int]:
    """Recreate under store `uri` every run of the archive in `folder` that the store does not
    hold yet (by origin); returns counts ({"imported": n, "present": m, "checkpoints": k})."""
    client = MlflowClient(uri)
    records = [json.loads(path.read_text(encoding="utf-8")) for path in sorted((folder / "runs").glob("*.json"))]
    counts = {"imported": 0, "present": 0, "checkpoints": 0}
    new_id: dict[str, str] = {}  # origin -> this store's run id, for every run the store holds
    experiments: dict[str, str] = {}
    for name in dict.fromkeys(record["experiment"] for record in records):
        experiments[name] = get_or_create_experiment(client, name, artifact_location(uri, artifact_root))
        new_id |= {origin_of(run): run.info.run_id for run in list_runs(client, experiments[name])}
    todo = []
    for record in records:
        if record["origin"] in new_id:
            counts["present"] += 1
            continue
        run = client.create_run(
            experiments[record["experiment"]], start_time=record["start_time"],
            tags={ORIGIN_TAG: record["origin"]}, run_name=record["tags"].get("mlflow.runName"),
        )  # fmt: skip
        new_id[record["origin"]] = run.info.run_id
        todo.append(record)

    for record in todo:
        run_id = new_id[record["origin"]]
        tags = [RunTag(key, _renamed(value, new_id)) for key, value in record["tags"].items()]
        params = [Param(key, value) for key, value in record["params"].items()]
        metrics = [Metric(key, value, timestamp, step) for key, points in record["metrics"].items() for step, timestamp, value in points]
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)  # the client splits it into MLflow's request limits
        if record["checkpoint"]:
            # Where the run's checkpoint tag points (checkpoints/slotN.pt), under that file name.
            where, _, name = record["tags"][CHECKPOINT_TAG].rpartition("/")
            with tempfile.TemporaryDirectory() as scratch:
                local = Path(scratch) / name
                shutil.copyfile(folder / "checkpoints" / record["checkpoint"], local)
                client.log_artifact(run_id, str(local), where or None)
            counts["checkpoints"] += 1
        # The process that trained an unfinished run is gone: KILLED, which its next launch takes over.
        status = "KILLED" if record["status"] in UNFINISHED else record["status"]
        client.set_terminated(run_id, status, end_time=record["end_time"] or record["start_time"])
        counts["imported"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lenet5.archive", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="write an experiment's runs as files")
    out.add_argument("--uri", required=True, help="the store, e.g. sqlite:////abs/path/mlflow.db")
    out.add_argument("--experiment", required=True)
    out.add_argument("--to", required=True, type=Path, help="the archive folder (created; files of runs not in the store are kept)")
    into = commands.add_parser("import", help="recreate an archive's runs in a store")
    into.add_argument("--uri", required=True, help="the store, e.g. sqlite:////abs/path/mlflow.db")
    into.add_argument("--from", dest="source", required=True, type=Path, help="an archive folder written by export")
    into.add_argument("--artifact-root", default=None, help="artifacts of a new experiment (default: beside a SQLite store)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per checkpoint says nothing
    if args.command == "export":
        try:
            counts = export_experiment(args.uri, args.experiment, args.to)
        except LookupError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"exported {counts['runs']} runs ({counts['checkpoints']} unfinished, with checkpoints) to {args.to}")
        return 0
    if not (args.source / "runs").is_dir():
        print(f"error: --from {args.source} holds no runs/ folder; name a folder written by `python -m lenet5.archive export`", file=sys.stderr)
        return 2
    counts = import_archive(args.uri, args.source, args.artifact_root)
    print(f"imported {counts['imported']} runs ({counts['checkpoints']} with checkpoints to continue from); {counts['present']} were in the store already")
    return 0


if __name__ == "__main__":
    sys.exit(main())
