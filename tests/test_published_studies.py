"""The studies committed under results/ablation/ (docs/studies.md): each folder's runs.csv,
the tidy frame of its final runs, gives back its variant and factor tables byte for byte, without
the MLflow store that trained them (which is not committed)."""

from __future__ import annotations

import pandas as pd
import pytest

from lenet5.config import PROJECT_DIR

from .helpers import assert_tables_rebuild_from_runs_csv

#: Every test here trains real runs or launches the CLI: the slow tier.
pytestmark = pytest.mark.slow

PUBLISHED = sorted(path.parent for path in (PROJECT_DIR / "results" / "ablation").glob("*/runs.csv"))


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda path: path.name)
def test_a_published_study_rebuilds_its_tables_from_its_runs_csv(folder, tmp_path):
    assert_tables_rebuild_from_runs_csv(folder, tmp_path)
    runs = pd.read_csv(folder / "runs.csv")
    assert (runs["stage"] == "final").all() and runs["test_error"].notna().all()  # finals only, all tested
