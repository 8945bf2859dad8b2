"""Fair studies: tune each variant's learning rate on held-out data, then compare on test.

    python -m lenet5.study sweep=ofat [study.tune.trials=5 ...] [any run.py override or sweep]

A thin layer over sweeps. The variants are the jobs `python run.py -m <the same arguments>`
would run, seeds set aside. For each variant:

- **tune**: a multirun of run.py over the log-spaced learning-rate grid of its optimizer
  (`study.tune.lr_range.<optim>`, `study.tune.trials` rates) and `study.tune.seeds`, each run
  `study.tune.passes` passes on the training images minus the last `study.tune.val_size`, with
  `data.test=false`: the test split is never loaded, so a tuning run has no test number to
  leak into the choice. The rate of lowest mean `val_error` is selected (analysis/tuning.py).
- **final**: a multirun of the selected rate over `study.final.seeds` on all training images
  (`data.val_size=0`), the preset's passes (or `study.final.passes`), evaluated on test.

Runs are found by their config hash, as sweeps skip them: a finished run is never trained
twice, whichever study or sweep trained it, and running the command again launches only what
is missing (a run that diverged, FAILED on a non-finite loss, is a result of its rate and is
not retried). In MLflow the study is a parent run (`study.parent`) holding each stage's sweep
parents; runs are tagged `stage=tune|final`, finals also `tune.id` (the tuning that chose them),
`tune.selected_run_ids` and the selected rate. The report (tables of the finals, the
selection with its budget, the tuning plot) goes to `study.out` and to the parent run.
A bad setting stops the command with one `error:` line and exit code 2; a variant that could
not be tuned or trained gives exit code 1 after the others are done.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import CONF_DIR, PROJECT_DIR, ConfigError, OptimName, select

STUDY_FILE = CONF_DIR / "study.yaml"
PARENT_TAG = "study.parent"
#: Set on a sweep parent (or study stage) that another study reused: `study.reused_by.<study id>`.
REUSED_TAG = "study.reused_by."
#: Keys the study sets itself in each stage; the command line must leave them to `study.*`.
OWNED_KEYS = {
    "optim.lr": "it is what the study tunes; set the range with study.tune.lr_range.<optimizer>=[low,high]",
    "seed": "use study.tune.seeds and study.final.seeds",
    "trainer.max_epochs": "use study.tune.passes and study.final.passes",
    "data.val_size": "use study.tune.val_size (the finals train on all training images)",
    "data.test": "the study sets it (false while tuning, true for the finals)",
}
#: The `failure_reason` of a run whose loss became NaN or infinite (module.py): its rate diverged.
DIVERGED = "FloatingPointError"


@dataclass
class TuneConfig:
    trials: int = MISSING
    passes: int = MISSING
    seeds: list[int] = MISSING
    val_size: int = MISSING
    lr_range: dict[str, list[float]] = MISSING


@dataclass
class FinalConfig:
    seeds: list[int] = MISSING
    passes: Optional[int] = None


@dataclass
class StudyConfig:
    tune: TuneConfig = field(default_factory=TuneConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    out: Optional[str] = None


def load_study_config(overrides: list[str]) -> Any:
    """conf/study.yaml under the StudyConfig schema with `study.*` overrides (prefix removed)
    applied; raise ConfigError (one line) on an unknown key, a wrong type or a bad value."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(StudyConfig), OmegaConf.load(STUDY_FILE), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        head = " ".join(str(err).split("\n")[0].split())
        where = f"study.{err.full_key}: " if getattr(err, "full_key", None) else ""
        raise ConfigError(f"bad study setting ({where}{head}); the settings and their defaults are in conf/study.yaml") from None
    check_study_config(cfg)
    return cfg


def check_study_config(cfg: Any) -> None:
    tune, final = cfg.tune, cfg.final
    if tune.trials < 2:
        raise ConfigError(f"study.tune.trials={tune.trials} must be at least 2 (rates tried per variant)")
    if tune.passes < 1:
        raise ConfigError(f"study.tune.passes={tune.passes} must be positive")
    if not tune.seeds or not final.seeds:
        raise ConfigError("study.tune.seeds and study.final.seeds must each name at least one seed, e.g. [0]")
    if not 0 < tune.val_size < 60_000:
        raise ConfigError(f"study.tune.val_size={tune.val_size} must be in 1..59999 (images held out for selection)")
    if final.passes is not None and final.passes < 1:
        raise ConfigError(f"study.final.passes={final.passes} must be positive, or null for the preset's own")
    optimizers = [o.value for o in OptimName]
    for name, bounds in tune.lr_range.items():
        if name not in optimizers:
            raise ConfigError(f"study.tune.lr_range.{name} is not an optimizer; valid: {', '.join(optimizers)}")
        if len(bounds) != 2 or not 0 < bounds[0] < bounds[1] or not math.isfinite(bounds[1]):
            raise ConfigError(f"study.tune.lr_range.{name}={list(bounds)} must be [low, high] with 0 < low < high")


def lr_grid(cfg: Any, optim: str) -> list[float]:
    """`study.tune.trials` rates log-spaced over the optimizer's range, ends included, at 3
    significant digits (so they read well as params and land on the preset's own value when
    the range is centred on it: 5e-05, 0.000158, 0.0005, 0.00158, 0.005)."""
    if optim not in cfg.tune.lr_range:
        raise ConfigError(f"no learning-rate range for optimizer {optim}; set study.tune.lr_range.{optim}=[low,high]")
    low, high = cfg.tune.lr_range[optim]
    n = cfg.tune.trials
    return [float(f"{low * (high / low) ** (i / (n - 1)):.3g}") for i in range(n)]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


@dataclass
class Variant:
    """One variant of the study: the run.py overrides that make it (no seed), its label
    (its run name without the seed) and its optimizer."""

    overrides: list[str]
    label: str
    optim: str
    train_subset: int  # data.train_subset (0: every training image the split leaves)


def split_arguments(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(study.* overrides without the prefix, run.py arguments, hydra.* arguments)."""
    study, run, hydra = [], [], []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        key = _key(arg)
        if key.startswith("study."):
            study.append(arg.removeprefix("study."))
        elif key.startswith("hydra"):
            hydra.append(arg)
        else:
            run.append(arg)
    return study, run, hydra


def check_owned(run_args: list[str]) -> None:
    """Refuse a key the study sets itself in each stage (one line naming the study setting to use)."""
    for arg in run_args:
        if _key(arg) in OWNED_KEYS:
            raise ConfigError(f"{arg} cannot be given to a study: {OWNED_KEYS[_key(arg)]}")


def variants_of(run_args: list[str]) -> list[Variant]:
    """The variants of `python run.py -m RUN_ARGS` (a sweep preset or one's own multirun),
    each once whatever its seeds; raises ConfigError for a key the study owns."""
    from .cli import job_overrides
    from .presets import compose_config, preset_factors
    from .tracking import run_name

    check_owned(run_args)
    jobs, _ = job_overrides(["-m", *run_args])
    unique = dict.fromkeys(tuple(o for o in job if _key(o) not in ("seed", "sweep")) for job in jobs)
    variants, labels = [], set()
    for overrides in unique:
        cfg = compose_config(list(overrides))
        label = run_name(cfg, preset_factors(str(cfg.experiment))).rsplit(" seed=", 1)[0]
        if label in labels:  # two configurations that the factors do not tell apart
            label = f"{label} #{len(variants) + 1}"
        labels.add(label)
        variants.append(Variant(list(overrides), label, select(cfg, "optim.name"), int(cfg.data.train_subset)))
    return variants


def tune_overrides(cfg: Any, variant: Variant, lr: float, seed: int) -> list[str]:
    return [*variant.overrides, f"optim.lr={lr}", f"seed={seed}", f"data.val_size={cfg.tune.val_size}",
            "data.test=false", f"trainer.max_epochs={cfg.tune.passes}"]  # fmt: skip


def final_overrides(cfg: Any, variant: Variant, lr: float, seed: int) -> list[str]:
    passes = [f"trainer.max_epochs={cfg.final.passes}"] if cfg.final.passes is not None else []
    return [*variant.overrides, f"optim.lr={lr}", f"seed={seed}", "data.val_size=0", "data.test=true", *passes]


@dataclass
class Job:
    """One training run the study needs: its overrides, config hash and what the store holds."""

    overrides: list[str]
    config_hash: str
    run: Any = None  # the FINISHED run, or the FAILED one whose loss diverged, or None

    @property
    def status(self) -> str:
        if self.run is None:
            return "missing"
        return "finished" if self.run.info.status == "FINISHED" else "diverged"


def _hash_of(overrides: list[str]) -> str:
    from .presets import compose_config
    from .tracking import config_hash

    return config_hash(compose_config(overrides))


def runs_by_hash(client, experiment_id: str) -> dict[str, Any]:
    """{config_hash: run} over the experiment: the FINISHED run of each hash, else one that
    FAILED because its loss diverged (a result of the rate: the same config fails the same way)."""
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=5000, page_token=token)
        for run in page:
            job_hash = run.data.tags.get("config_hash")
            if job_hash is None:
                continue
            if run.info.status == "FINISHED":
                found[job_hash] = run
            elif run.info.status == "FAILED" and run.data.tags.get("failure_reason", "").startswith(DIVERGED):
                found.setdefault(job_hash, run)
        token = page.token
        if not token:
            return found


def study_id_of(cfg: Any, variants: list[Variant], run_args: list[str]) -> str:
    """Same variants, settings and run.py arguments (in any order) -> same id. What does not
    change what is trained is left out (launchers, `trainer.compile`, `trainer.progress_bar`,
    `tracking.*`, `study.out`), so a study resumed with another of those is the same study."""
    from .config import is_scientific_key

    def scientific(overrides: list[str]) -> list[str]:
        return [o for o in overrides if is_scientific_key(_key(o))]

    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("out", None)
    payload = {
        "variants": [scientific(v.overrides) for v in variants],
        "study": settings,
        "args": sorted(scientific(run_args)),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


class Study:
    """One study command: the variants, the store, the parent run, the stages."""

    def __init__(self, cfg: Any, variants: list[Variant], run_args: list[str], hydra_args: list[str], preset: str):
        from mlflow.tracking import MlflowClient

        from .presets import compose_config
        from .tracking import get_or_create_experiment, is_remote

        self.cfg, self.variants, self.run_args, self.preset = cfg, variants, run_args, preset
        first = compose_config(variants[0].overrides)
        self.uri, self.experiment = str(first.tracking.uri), str(first.tracking.experiment)
        self.client = MlflowClient(self.uri)
        artifact_root = None if is_remote(self.uri) else str(first.tracking.artifact_root)
        self.experiment_id = get_or_create_experiment(self.client, self.experiment, artifact_root)
        self.study_id = study_id_of(cfg, variants, run_args)
        base = next((a.split("=", 1)[1] for a in hydra_args if _key(a) == "hydra.sweep.dir"), None)
        self.dir = Path(base) if base else Path("multirun") / f"study_{self.study_id}"
        self.hydra_args = [a for a in hydra_args if _key(a) != "hydra.sweep.dir"]
        self.errors: dict[str, str] = {}
        self._known: dict[str, Any] | None = None  # runs_by_hash, read again after each launch

    # --- MLflow ------------------------------------------------------------------------

    def open_parent(self) -> str:
        """The study's parent run (created once, found again by its id on a re-run), RUNNING."""
        from .tracking import flatten_config

        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.study_id = '{self.study_id}' and tags.`{PARENT_TAG}` = 'true'", max_results=1
        )
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        command = " ".join(["python -m lenet5.study", *self.run_args])
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"study {self.preset} {self.study_id}",
            tags={PARENT_TAG: "true", "study_id": self.study_id, "study.command": command, "study.variants": str(len(self.variants))},
        )
        self.client.log_batch(run.info.run_id, params=[_param(f"study.{k}", v) for k, v in flatten_config(self.cfg).items()])
        return run.info.run_id

    def adopt_sweep(self, sweep_dir: Path, stage: str, variant: Variant) -> None:
        """Put the sweep parent a stage launch created under the study's parent run (or, when
        another study holds it already, tag it as reused by this one)."""
        sweep_file = sweep_dir / "mlflow_sweep.json"
        if not sweep_file.is_file():
            return
        parent = json.loads(sweep_file.read_text())["parent_run_id"]
        tags = self.client.get_run(parent).data.tags
        if tags.get("mlflow.parentRunId") not in (None, self.parent_run_id):
            self.client.set_tag(parent, REUSED_TAG + self.study_id, "true")
            return
        self.client.set_tag(parent, "mlflow.parentRunId", self.parent_run_id)
        self.client.set_tag(parent, "mlflow.runName", f"{stage} {variant.label}")
        self.client.set_tag(parent, "stage", stage)

    def tag_runs(self, jobs: list[Job], tags: dict[str, str]) -> None:
        for job in jobs:
            if job.run is not None:
                for key, value in tags.items():
                    if job.run.data.tags.get(key) != value:
                        self.client.set_tag(job.run.info.run_id, key, value)

    # --- stages ------------------------------------------------------------------------

    def launch(self, stage: str, index: int, variant: Variant, fixed: list[str], lrs: list[float], seeds: list[int]) -> None:
        """`python run.py -m` over `lrs` x `seeds` of one variant (finished jobs skip themselves)."""
        sweep_dir = self.dir / stage / f"{index:02d}"
        command = [
            sys.executable, str(PROJECT_DIR / "run.py"), "-m", *fixed,
            "optim.lr=" + ",".join(str(lr) for lr in lrs), "seed=" + ",".join(str(s) for s in seeds),
            *self.hydra_args, f"hydra.sweep.dir={sweep_dir.resolve()}", "trainer.progress_bar=false",
        ]  # fmt: skip
        print(f"study {self.study_id}: {stage} {variant.label}: " + " ".join(command[2:]), flush=True)
        done = subprocess.run(command)
        self._known = None
        if done.returncode == 2:
            raise ConfigError(f"run.py refused the {stage} of {variant.label} (its error is above)")
        self.adopt_sweep(sweep_dir, stage, variant)

    def stage_jobs(self, make: Any, variant: Variant, lrs: list[float], seeds: list[int]) -> dict[tuple[float, int], Job]:
        jobs = {}
        for lr in lrs:
            for seed in seeds:
                overrides = make(self.cfg, variant, lr, seed)
                jobs[(lr, seed)] = Job(overrides, _hash_of(overrides))
        return jobs

    def run_missing(self, stage: str, index: int, variant: Variant, jobs: dict[tuple[float, int], Job]) -> None:
        """Look every job up in the store; launch the ones missing (one multirun per set of
        seeds that the same rates lack), then look again."""
        self.lookup(jobs)
        missing: dict[tuple[int, ...], list[float]] = {}
        for lr in dict.fromkeys(lr for lr, _ in jobs):
            seeds = tuple(seed for (rate, seed), job in jobs.items() if rate == lr and job.status == "missing")
            if seeds:
                missing.setdefault(seeds, []).append(lr)
        for n, (seeds, lrs) in enumerate(missing.items()):
            fixed = [o for o in next(iter(jobs.values())).overrides if _key(o) not in ("optim.lr", "seed")]
            self.launch(stage, index * 10 + n, variant, fixed, lrs, list(seeds))
        if missing:
            self.lookup(jobs)

    def lookup(self, jobs: dict[Any, Job]) -> None:
        if self._known is None:
            self._known = runs_by_hash(self.client, self.experiment_id)
        for job in jobs.values():
            job.run = self._known.get(job.config_hash)

    def tune(self, index: int, variant: Variant) -> tuple[list[dict], dict[tuple[float, int], Job]]:
        """Run the tuning of one variant; returns its trials (rows of analysis.tuning's frame)."""
        lrs = lr_grid(self.cfg, variant.optim)
        jobs = self.stage_jobs(tune_overrides, variant, lrs, list(self.cfg.tune.seeds))
        self.run_missing("tune", index, variant, jobs)
        tuning_id = hashlib.sha1(json.dumps(sorted(j.config_hash for j in jobs.values())).encode()).hexdigest()[:10]
        self.tag_runs(list(jobs.values()), {"stage": "tune", "tune.id": tuning_id, "study.variant": variant.label})
        low, high = self.cfg.tune.lr_range[variant.optim]
        rows = [
            {
                "variant": variant.label, "optim": variant.optim, "lr": lr, "seed": seed, "status": job.status,
                # The last pass's validation error; a tuning run logs no test metric (data.test=false).
                "val_error": job.run.data.metrics.get("val_error", math.nan) if job.status == "finished" else math.nan,
                "run_id": job.run.info.run_id if job.run is not None else None,
                "low": low, "high": high, "passes": self.cfg.tune.passes,
                "train_images": variant.train_subset or 60_000 - self.cfg.tune.val_size,
                "tune_id": tuning_id,
            }
            for (lr, seed), job in jobs.items()
        ]  # fmt: skip
        return rows, jobs

    def final(self, index: int, variant: Variant, selected: Any, tuning_id: str) -> list[Job]:
        lr = float(selected["selected_lr"])
        jobs = self.stage_jobs(final_overrides, variant, [lr], list(self.cfg.final.seeds))
        self.run_missing("final", index, variant, jobs)
        done = [job for job in jobs.values() if job.status == "finished"]
        if len(done) < len(jobs):
            self.errors[variant.label] = (
                f"{len(jobs) - len(done)} final run(s) did not finish (FAILED, or being trained by another launch "
                "of the study); run the command again"
            )
        self.tag_runs(done, {
            "stage": "final", "tune.id": tuning_id, "tune.selected.optim.lr": f"{lr:g}",
            "tune.selected_run_ids": selected["selected_run_ids"], "tune.budget_passes": str(selected["budget_passes"]),
            "tune.at_edge": selected["at_edge"] or "no", f"study.member.{self.study_id}": "true",
            "study.variant": variant.label,
        })  # fmt: skip
        return done

    # --- the whole study ---------------------------------------------------------------

    def run(self) -> int:
        import pandas as pd

        from analysis.tuning import select_rates, unresolved

        self.parent_run_id = self.open_parent()
        print(f"study {self.study_id}: {len(self.variants)} variant(s), parent run {self.parent_run_id} in experiment '{self.experiment}'")
        try:
            trials, tuning_ids = [], {}
            for index, variant in enumerate(self.variants):
                rows, _ = self.tune(index, variant)
                trials += rows
                tuning_ids[variant.label] = rows[0]["tune_id"]
            trials = pd.DataFrame(trials)
            selection = select_rates(trials)
            self.errors |= unresolved(trials)
            finals: dict[str, str] = {}
            chosen = selection.set_index("variant")
            for index, variant in enumerate(self.variants):
                if variant.label in chosen.index:
                    for job in self.final(index, variant, chosen.loc[variant.label], tuning_ids[variant.label]):
                        finals[job.run.info.run_id] = variant.label
            self.report(trials, selection, finals)
        finally:
            self.client.set_tag(self.parent_run_id, "study.errors", str(len(self.errors)))
            self.client.set_terminated(self.parent_run_id, "FINISHED")
        for label, why in self.errors.items():
            print(f"error: {label}: {why}", file=sys.stderr)
        return 1 if self.errors else 0

    def report(self, trials: Any, selection: Any, finals: dict[str, str]) -> None:
        from analysis.runs import ReportError
        from analysis.study_report import write_study_report

        out = Path(self.cfg.out) if self.cfg.out else self.dir / "report"
        try:
            files = write_study_report(self.uri, self.experiment, out, trials, selection, finals, f"study {self.study_id}")
        except ReportError as err:
            self.errors["report"] = str(err)
            return
        for path in files.values():
            self.client.log_artifact(self.parent_run_id, str(path), "report")
        if "study.md" in files:
            print(files["study.md"].read_text(encoding="utf-8"))
        print(f"study {self.study_id}: report in {out.resolve()} and on parent run {self.parent_run_id}")


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        study_args, run_args, hydra_args = split_arguments(argv)
        cfg = load_study_config(study_args)
        check_owned(run_args)
        from .cli import check_command_line

        check_command_line(["-m", *run_args, *hydra_args])  # every job of the sweep, as run.py checks it
        variants = variants_of(run_args)
        for variant in variants:
            lr_grid(cfg, variant.optim)
            if variant.train_subset > 60_000 - cfg.tune.val_size:
                raise ConfigError(
                    f"data.train_subset={variant.train_subset} does not fit beside the {cfg.tune.val_size} images "
                    f"study.tune.val_size holds out; use at most {60_000 - cfg.tune.val_size}"
                )
        preset = next((a.split("=", 1)[1] for a in run_args if _key(a) == "sweep"), "custom")
        study = Study(cfg, variants, run_args, hydra_args, f"sweep={preset}" if preset != "custom" else "custom")
        return study.run()
    except ConfigError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
