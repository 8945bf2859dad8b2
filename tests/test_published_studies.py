"""The studies committed under results/ablation/ (README: Fair studies): each folder's runs.csv,
the tidy frame of its final runs, gives back its variant and factor tables byte for byte, without
the MLflow store that trained them (which is not committed)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.report import main as report_main
from lenet5.config import PROJECT_DIR

PUBLISHED = sorted(path.parent for path in (PROJECT_DIR / "results" / "ablation").glob("*/runs.csv"))


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda path: path.name)
def test_a_published_study_rebuilds_its_tables_from_its_runs_csv(folder, tmp_path):
    assert report_main(["--runs-csv", str(folder / "runs.csv"), "--out", str(tmp_path)]) == 0
    for name in ("variants.md", "variants.csv", "factors.md", "factors.csv"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), f"{folder.name}/{name}"
    runs = pd.read_csv(folder / "runs.csv")
    assert (runs["stage"] == "final").all() and runs["test_error"].notna().all()  # finals only, all tested
