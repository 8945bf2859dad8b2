"""Draw one MNIST test image passing through a run's trained network, and log the figure.

    python -m lenet5.inspect_run RUN_ID INDEX [--tracking-uri URI] [--out PATH]

Loads the run's MLflow model (`runs:/RUN_ID/model`), preprocesses test image INDEX (0 to
9,999, of all 10,000, whatever `data.test_subset` the run used) as the run did, and saves one
figure: the input, the squashed maps of C1, S2, C3, S4, the 120 C5 units, F6 beside the ten
RBF bitmaps, and the ten distances (logits for a softmax head). The PNG goes to --out
(default `inspect_<run id[:8]>_<INDEX>.png`) and to the run as `inspect/test_<INDEX>.png`.
Bad input prints one `error: ...` line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .adapters import global_tracking_uri
from .config import DEFAULT_TRACKING_URI, PROJECT_DIR, ConfigError, Dataset, Head, Preprocess
from .data import MNIST_TEST_SIZE, ensure_mnist, load_mnist_split, preprocess
from .figures import network_figure


class InspectError(Exception):
    """Bad input: the message is the one `error:` line the command prints."""


def find_run(tracking_uri: str, run_id: str):
    """(client, run); InspectError for a missing store or an unknown run id."""
    # MLflow creates a missing SQLite file on first contact: a typo would leave an empty store behind.
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise InspectError(f"no MLflow store at {tracking_uri.removeprefix('sqlite:///')} (--tracking-uri {tracking_uri})")
    client = MlflowClient(tracking_uri)
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise InspectError(f"run {run_id} not found in {tracking_uri}") from None


@contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    """Environment variable `name` set to `value` for the block, then as it was (unset included)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def load_network(tracking_uri: str, run_id: str) -> torch.nn.Module:
    """The run's trained LeNet5 on the CPU, in eval mode; InspectError if it has none."""
    import mlflow.pytorch

    # runs:/ URIs resolve through the process's tracking URI: set for the call and restored
    # (as lenet5.tracking does when logging the model).
    # MLflow draws a progress bar on stderr for every artifact download; an error must stay one line.
    quiet = environ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with global_tracking_uri(tracking_uri), quiet:
        try:
            return mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu").eval()
        except MlflowException:
            raise InspectError(
                f"run {run_id} has no MLflow model 'model' to load (FAILED runs, and runs from before "
                f"the suite logged its networks, have none)"
            ) from None


def load_test_image(run, index: int) -> tuple[torch.Tensor, int]:
    """(image (1, 1, S, S) float32 preprocessed as the run's `data.preprocess`, its label)."""
    if not 0 <= index < MNIST_TEST_SIZE:
        raise InspectError(f"index {index} is out of range: MNIST has test images 0 to {MNIST_TEST_SIZE - 1}")
    # $MNIST_ROOT first: the run's data.root is where it trained, which may be another machine.
    root = os.environ.get("MNIST_ROOT") or run.data.params.get("data.root") or str(PROJECT_DIR / "data")
    dataset = Dataset(run.data.params.get("data.dataset", "mnist"))  # runs from before the key: MNIST
    try:
        ensure_mnist(root, download=False, dataset=dataset)
    except ConfigError as err:  # names the file at fault and what to do
        raise InspectError(str(err)) from None
    images, labels = load_mnist_split(root, train=False, dataset=dataset)
    mode = Preprocess(run.data.params.get("data.preprocess", "paper"))
    return preprocess(images[index : index + 1], mode), int(labels[index])


def trace(network: torch.nn.Module, image: torch.Tensor) -> tuple[list[tuple[str, torch.Tensor]], int]:
    """What the figure draws: `network.stage_outputs(image)` for one image (1, 1, S, S), each
    output with its batch dimension of 1, and the predicted class (`network.predict`)."""
    with torch.no_grad():
        stages = network.stage_outputs(image)
    return stages, int(network.predict(stages[-1][1])[0])


def inspect_run(run_id: str, index: int, tracking_uri: str = DEFAULT_TRACKING_URI, out: Path | None = None) -> dict:
    """Draw test image `index` through run `run_id`'s network, save and log the PNG.

    Returns {"png": Path, "artifact": "inspect/test_<index>.png", "label": int, "predicted": int}.
    """
    client, run = find_run(tracking_uri, run_id)
    image, label = load_test_image(run, index)
    network = load_network(tracking_uri, run_id)
    if image.shape[-1] != network.input_size:  # the params and the model disagree: trust neither silently
        size = network.input_size
        raise InspectError(f"run {run_id}: its model takes {size}x{size} images, its data.preprocess gives {image.shape[-1]}")
    stages, predicted = trace(network, image)
    prototypes = network.output.prototypes if network.head_kind == Head.rbf else None
    title = f"run {run.info.run_name} ({run_id[:8]}), {run.data.params.get('data.dataset', 'mnist')} test image {index}"
    figure = network_figure(image[0], [(name, x[0]) for name, x in stages], predicted, prototypes, label, title)
    png = Path(out) if out is not None else Path(f"inspect_{run_id[:8]}_{index}.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png)
    artifact = f"inspect/test_{index}.png"
    client.log_figure(run_id, figure, artifact)
    plt.close(figure)
    return {"png": png, "artifact": artifact, "label": label, "predicted": predicted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lenet5.inspect_run", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of a training run")
    parser.add_argument("index", metavar="INDEX", type=int, help=f"MNIST test image, 0 to {MNIST_TEST_SIZE - 1}")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})")
    parser.add_argument("--out", type=Path, help="PNG to write (default inspect_<run id[:8]>_<INDEX>.png here)")
    args = parser.parse_args(argv)
    try:
        result = inspect_run(args.run_id, args.index, args.tracking_uri, args.out)
    except InspectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"test image {args.index} (true {result['label']}, predicted {result['predicted']}): "
          f"{result['png']}, logged to run {args.run_id} as {result['artifact']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
