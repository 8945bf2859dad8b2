"""`python -m lenet5.inspect_run`: one test image through a real run's trained network."""

from __future__ import annotations

import mlflow
import pytest
import torch

from lenet5 import inspect_run
from lenet5.jobs import train

from .helpers import compose, fresh_store, small_overrides

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

INDEX = 7
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = fresh_store(tmp_path_factory.mktemp('store'))
    cfg = compose("experiment=paper", "data.batch_size=32", *small_overrides(store, experiment="inspect", subset=300))
    return train(cfg)


@pytest.fixture(scope="module")
def inspected(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "figure.png"
    argv = [trained["run_id"], str(INDEX), "--tracking-uri", trained["tracking_uri"], "--out", str(out)]
    assert inspect_run.main(argv) == 0
    return out


def test_png_is_written_and_logged_to_the_run(trained, inspected):
    assert inspected.read_bytes()[:8] == PNG_SIGNATURE
    client = mlflow.MlflowClient(trained["tracking_uri"])
    logged = [a.path for a in client.list_artifacts(trained["run_id"], "inspect")]
    assert logged == [f"inspect/test_{INDEX}.png"]


def test_drawn_stages_are_the_networks_forward_pass(trained):
    uri, run_id = trained["tracking_uri"], trained["run_id"]
    _, run = inspect_run.find_run(uri, run_id)
    image, label = inspect_run.load_test_image(run, INDEX)
    assert image.shape == (1, 1, 32, 32) and 0 <= label <= 9
    network = inspect_run.load_network(uri, run_id)
    stages, predicted = inspect_run.trace(network, image)
    with torch.no_grad():
        distances = network(image)
    assert [name for name, _ in stages] == ["C1", "S2", "C3", "S4", "C5", "F6", "OUTPUT"]
    shapes = [tuple(x.shape) for _, x in stages]
    assert shapes == [(1, 6, 28, 28), (1, 6, 14, 14), (1, 16, 10, 10), (1, 16, 5, 5), (1, 120, 1, 1), (1, 84), (1, 10)]
    assert torch.equal(stages[-1][1], distances)
    assert predicted == network.predict(distances).item()
    # The F6 state drawn beside the bitmaps gives the distances drawn beside it.
    f6 = stages[-2][1]
    assert torch.allclose(((f6 - network.output.prototypes) ** 2).sum(1), distances[0])


def test_index_out_of_range_is_one_error_line(trained, capsys):
    argv = [trained["run_id"], "10000", "--tracking-uri", trained["tracking_uri"]]
    assert inspect_run.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "10000" in err[0]


def test_unknown_run_is_one_error_line(trained, capsys):
    assert inspect_run.main(["0123456789abcdef", "0", "--tracking-uri", trained["tracking_uri"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "0123456789abcdef" in err[0]


def test_run_without_model_is_one_error_line(trained, capsys):
    client = mlflow.MlflowClient(trained["tracking_uri"])
    experiment = client.get_experiment_by_name(trained["experiment"]).experiment_id
    bare = client.create_run(experiment, run_name="no model").info.run_id
    client.set_terminated(bare, "FAILED")
    assert inspect_run.main([bare, "0", "--tracking-uri", trained["tracking_uri"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and bare in err[0]
