"""Where a run came from, in MLflow's own vocabulary: the code (git commit, dirty flag, the
script) as `mlflow.source.*` tags, and the dataset's splits (MNIST or Fashion-MNIST) as logged
dataset inputs.

MlflowClient.create_run adds none of these (only the fluent `mlflow.start_run` resolves
source tags), so the suite sets them itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from .config import PROJECT_DIR
from .data import DATASETS

#: Tag saying whether the working tree differed from the commit (tracked or untracked files).
GIT_DIRTY_TAG = "git_dirty"

#: MNIST file holding each side's images and labels.
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

#: The `mlflow.data.context` of each split.
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_tags() -> dict[str, str]:
    """`mlflow.source.*` tags and `git_dirty` for the code this process runs.

    The script is argv[0] relative to the project (`run.py`, `analysis/reproduction.py`).
    Outside a git checkout the git tags are left out rather than guessed.
    """
    script = Path(sys.argv[0]).resolve()
    name = str(script.relative_to(PROJECT_DIR)) if script.is_relative_to(PROJECT_DIR) else str(script)
    tags = {MLFLOW_SOURCE_NAME: name, MLFLOW_SOURCE_TYPE: "LOCAL"}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
        status = _git("status", "--porcelain")
        if status is not None:
            tags[GIT_DIRTY_TAG] = str(bool(status)).lower()
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            tags[MLFLOW_GIT_BRANCH] = branch
    return tags


def mnist_inputs(raw_dir: Path, split_rows: dict[str, tuple[bool, int, int]], dataset: str = "mnist") -> list[DatasetInput]:
    """One dataset input per split used: name `dataset` (`mnist` or `fashion_mnist`), context
    training / validation / test.

    `split_rows` is MNISTDataModule.split_rows(): {split: (from the training files?, first
    row, row after the last)}. The digest is a hash of the split's two files' SHA-256 and its
    rows, so the same images give the same digest in every run and store (and the three
    splits are three datasets: MLflow links a dataset to a run once). The profile states the
    files, rows and number of images.
    """
    sha256 = DATASETS[dataset][1]
    inputs = []
    with warnings.catch_warnings():  # MLflow registers the local source class twice and warns that it picked one
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(raw_dir))  # a local-folder source, as mlflow.data.from_* would make
    for split, (from_train, start, stop) in split_rows.items():
        files = MNIST_FILES[from_train]
        digest = hashlib.sha256(json.dumps([[sha256[f] for f in files], start, stop]).encode()).hexdigest()[:16]
        meta = MetaDataset(source, name=str(dataset), digest=digest).to_dict()
        profile = {"split": split, "num_images": stop - start, "rows": f"{start}:{stop}", "files": list(files)}
        entity = Dataset(
            name=meta["name"], digest=meta["digest"], source_type=meta["source_type"], source=meta["source"],
            profile=json.dumps(profile),
        )  # fmt: skip
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_CONTEXTS[split])]))
    return inputs
