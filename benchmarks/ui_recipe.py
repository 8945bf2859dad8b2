"""The README's recipe for comparing a study's variants in the MLflow UI, followed literally in a
real browser (headless Chromium), with screenshots and checks of what it shows.

    MNIST_ROOT=../shared/data python benchmarks/ui_recipe.py --out /tmp/ui_recipe [--store DIR]

Needs Playwright for Python (`pip install playwright`, no `playwright install`: it drives the
system's Chromium, `--chromium`, default /usr/bin/chromium; Debian: `apt-get install chromium`).
Not part of the test suite.

`--store DIR` takes the store in DIR/mlflow.db; without it, a small tour study (the README's
variants, `variant=none,optim_adam`, on 300 training images: a few minutes on 2 cores) is made
in `--out`/store. The study (`--study-id`, default the experiment's latest study parent) and its
variants' labels are read from the store, so the recipe is followed the same way for any study,
a factorial one included. `mlflow ui` serves the store on 127.0.0.1 only, and a fresh browser
profile (no stored choice of view) follows the steps of README.md's **The MLflow UI**:

1. http://127.0.0.1:PORT, **Model training** (top left), the study's experiment;
2. the filter ``tags.stage = 'final' and tags.`study.member.<id>` = 'true'`` in the search box;
3. **Sort** -> test_error;
4. **Group by** -> study.variant;
5. **Chart view**, test_error in the chart search box.

Checks: the experiment opens on its runs table (not the GenAI overview); the grouped table has
one group row per variant and nothing else (no 'Additional runs' group, "N matching runs" for
the N finals, no stage parent), each group row's test_error average equal to the store's mean
over its seeds; the chart view draws a test_error chart whose legend names every variant.
Then, in another fresh profile, the address a run prints at its end opens that run's page, whose
metrics table links test_error (the last pass's metrics) and the size metrics to its model.
Screenshots in `--out`: 01_home_model_training.png, 02_runs_table.png, 03_filtered_sorted.png,
04_grouped_test_error.png, 05_chart_test_error.png, 06_run_page.png. Exit code 0 when every
check holds.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (experiment id, run id, run name) of one final, whose printed address is checked.
FINAL: tuple[str, str, str] = ("", "", "")

#: The README's tour study, on fewer images (what is checked is the UI, not what is learned).
TOUR = [
    "variant=none,optim_adam", "data.train_subset=300", "data.test_subset=500", "study.tune.val_size=500",
    "study.tune.trials=2", "study.tune.passes=1", "study.final.seeds=[0,1]", "study.final.passes=1",
]  # fmt: skip


def make_store(folder: Path, experiment: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "lenet5.study", *TOUR, f"tracking.experiment={experiment}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"tracking.artifact_root={folder / 'mlartifacts'}",
        f"study.out={folder / 'report'}",
    ]  # fmt: skip
    print("making the store:", " ".join(command[1:]), flush=True)
    with open(folder / "study.log", "w") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"the tour study failed (exit {done.returncode}); its output: {folder / 'study.log'}")


def study_of(uri: str, experiment: str, study_id: str | None) -> tuple[str, dict[str, list[float]]]:
    """The study's id and {variant label: its finals' test errors}, from the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"no experiment '{experiment}' in {uri}")
    if study_id is None:
        parents = client.search_runs([found.experiment_id], "tags.`study.parent` = 'true'", order_by=["attributes.start_time DESC"])
        if not parents:
            sys.exit(f"no study in experiment '{experiment}'")
        study_id = parents[0].data.tags["study_id"]
    finals = client.search_runs(
        [found.experiment_id], f"tags.stage = 'final' and tags.`study.member.{study_id}` = 'true'", max_results=5000
    )
    errors: dict[str, list[float]] = {}
    global FINAL
    FINAL = (found.experiment_id, finals[0].info.run_id, finals[0].info.run_name)
    for run in finals:
        errors.setdefault(run.data.tags["study.variant"], []).append(run.data.metrics["test_error"])
    if not errors:
        sys.exit(f"study {study_id} has no finals in experiment '{experiment}'")
    return study_id, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Its own process group: `mlflow ui` runs uvicorn in a child, which `stop_ui` ends with it.
    server = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(2)
        if server.poll() is not None:
            sys.exit(f"mlflow ui ended (exit {server.returncode}); its output: {log}")
    stop_ui(server)
    sys.exit(f"mlflow ui did not answer on port {port} within 300 s; its output: {log}")


def stop_ui(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a loaded machine: uvicorn may take longer to wind down
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            self.failed.append(what)


def table_rows(page) -> list[str]:
    """The runs table's rows as text, pinned and scrolled parts of each row joined."""
    rows = page.evaluate(
        """() => { const r = {}; document.querySelectorAll('.ag-row').forEach(e => {
             const i = Number(e.getAttribute('row-index')); r[i] = (r[i] || '') + ' | ' + e.innerText.replace(/\\n/g, ' ; '); });
           return Object.keys(r).sort((a, b) => a - b).map(k => r[k]); }"""
    )
    return list(rows)


def follow_recipe(base: str, experiment: str, study_id: str, errors: dict[str, list[float]], out: Path, chromium: str, final: tuple[str, str, str]) -> list[str]:
    experiment_id, final_id, final_name = final
    from playwright.sync_api import sync_playwright

    check = Checks()
    recipe_filter = f"tags.stage = 'final' and tags.`study.member.{study_id}` = 'true'"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1920, "height": 1000}).new_page()  # a fresh profile
        page.set_default_timeout(120_000)

        # 1. The address, Model training at the top left, then the study's experiment.
        page.goto(base + "/", wait_until="domcontentloaded")
        page.get_by_text("Model training", exact=True).first.click()
        page.wait_for_timeout(1500)
        page.screenshot(path=out / "01_home_model_training.png")
        page.get_by_role("link", name=experiment, exact=True).first.click()
        search = page.get_by_test_id("search-box")
        search.wait_for()
        page.wait_for_timeout(3000)
        page.screenshot(path=out / "02_runs_table.png")
        check("/runs" in page.url and "workflowType=machine_learning" in page.url, f"the experiment opens on its runs table ({page.url})")

        # 2. The filter; 3. Sort -> test_error (which also adds its column).
        search.fill(recipe_filter)
        search.press("Enter")
        page.wait_for_timeout(3000)
        page.get_by_test_id("sort-select-dropdown").click()
        page.keyboard.type("test_error")
        page.get_by_text("test_error", exact=True).last.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(3000)
        page.screenshot(path=out / "03_filtered_sorted.png")

        # 4. Group by -> study.variant.
        page.get_by_role("button", name="Group by").click()
        page.get_by_placeholder("Search").last.fill("study.variant")
        page.get_by_text("study.variant", exact=True).last.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(3000)
        assistant = page.get_by_role("button", name="Close")
        if assistant.count():  # the MLflow Assistant panel, open in a new profile, hides the columns
            assistant.last.click()
            page.wait_for_timeout(1500)
        page.screenshot(path=out / "04_grouped_test_error.png")
        rows = table_rows(page)
        body = page.inner_text("body")
        n_finals = sum(len(v) for v in errors.values())
        headers = page.evaluate("() => Array.from(document.querySelectorAll('.ag-header-cell')).map(e => e.innerText.trim())")
        check("test_error" in headers, "the table has a test_error column")
        groups = [row for row in rows if "Group: " in row]
        check(len(groups) == len(errors), f"{len(groups)} group rows for {len(errors)} variants")
        check("Additional runs" not in body, "no 'Additional runs' group")
        check(f"{n_finals} matching runs" in body, f"the footer counts the {n_finals} finals ('{n_finals} matching runs')")
        check(len(rows) == len(errors) + n_finals, f"{len(rows)} rows: one per variant and one per final, nothing else")
        for label, values in errors.items():
            row = next((r for r in groups if f"Group: {label} ;" in r), None)
            mean = statistics.fmean(values)
            shown = [float(x) for x in re.findall(r"([0-9.]+) \(average\)", row or "")]
            check(bool(shown) and abs(shown[0] - mean) < 1e-4, f"group '{label}': test_error average {shown} = the store's mean {mean:.4f}")

        # 5. Chart view, test_error in the chart search box.
        page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
        charts = page.get_by_placeholder("Search metric charts")
        charts.wait_for()
        charts.fill("test_error")
        for label in errors:  # the chart draws once its metric histories arrive: seconds on a loaded machine
            page.get_by_text(f"{label} (test_error)", exact=True).first.wait_for()
        page.wait_for_timeout(2000)
        page.screenshot(path=out / "05_chart_test_error.png")
        body = page.inner_text("body")
        check(re.search(r"Model metrics\s*\(1\)", body) is not None, "the chart search leaves one chart, under 'Model metrics'")
        for label in errors:
            check(f"{label} (test_error)" in body, f"the test_error chart's legend names '{label}'")
        check("Unassigned" not in body, "no 'Unassigned' entry in the chart")

        # The address a run prints at its end (docs/tracking.md), in another fresh profile, and its model.
        page = browser.new_context(viewport={"width": 1920, "height": 1000}).new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{base}/#/experiments/{experiment_id}/runs/{final_id}?workflowType=machine_learning", wait_until="domcontentloaded")
        page.get_by_text(final_name, exact=True).first.wait_for()
        page.wait_for_timeout(3000)
        page.screenshot(path=out / "06_run_page.png")
        check("workflowType=machine_learning" in page.url and final_id in page.url, f"a run's printed address opens its page ({page.url})")
        for key in ("test_error", "train_loss", "model_trainable_params"):
            row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True)).first
            check(row.count() > 0 and "model" in row.inner_text(), f"the run's page links {key} to its model (its Models column)")
        browser.close()
    return check.failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots (and the store it makes)")
    parser.add_argument("--store", type=Path, help="folder holding mlflow.db with the study (default: make a tour study in OUT/store)")
    parser.add_argument("--experiment", default="tour_study")
    parser.add_argument("--study-id", help="default: the experiment's latest study")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.store or args.out / "store"
    if args.store is None and not (folder / "mlflow.db").is_file():
        make_store(folder, args.experiment)
    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    study_id, errors = study_of(uri, args.experiment, args.study_id)
    print(f"study {study_id}: variants {', '.join(f'{k} ({len(v)} finals)' for k, v in errors.items())}", flush=True)
    port = args.port or free_port()
    server = start_ui(uri, port, args.out / "mlflow_ui.log")
    try:
        failed = follow_recipe(f"http://127.0.0.1:{port}", args.experiment, study_id, errors, args.out, args.chromium, FINAL)
    finally:
        stop_ui(server)
    print(f"screenshots in {args.out.resolve()}")
    print("every check holds" if not failed else f"{len(failed)} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
