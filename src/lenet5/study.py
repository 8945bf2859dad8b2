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
import itertools
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra_plugins.lenet5_stacked_launcher.stacked_launcher import register as register_stacked_launcher
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import CONF_DIR, PROJECT_DIR, ConfigError, OptimName, select

STUDY_FILE = CONF_DIR / "study.yaml"
STUDY_PARENT_TAG = "study.parent"
#: Set on a sweep parent (or study stage) that another study reused: `study.reused_by.<study id>`.
STUDY_REUSED_TAG = "study.reused_by."
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
    refine: bool = MISSING


@dataclass
class FinalConfig:
    seeds: list[int] = MISSING
    passes: Optional[int] = None
    min_seeds: Optional[int] = None
    max_seeds: Optional[int] = None


@dataclass
class StudyConfig:
    tune: TuneConfig = field(default_factory=TuneConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    margin: Optional[float] = None
    plan: bool = False
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
    for name, seeds in (("tune", tune.seeds), ("final", final.seeds)):
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ConfigError(f"study.{name}.seeds={list(seeds)} must be distinct seeds of 0 or more, e.g. [0,1,2]")
    if final.min_seeds is not None:
        pilot = len(final.seeds)
        if final.min_seeds < max(pilot, 2):
            raise ConfigError(
                f"study.final.min_seeds={final.min_seeds} must be at least the {pilot} pilot seed(s) of study.final.seeds "
                "(and 2): the pilot plans how many seeds each variant gets, from min_seeds to max_seeds"
            )
        if pilot < 2:
            raise ConfigError(f"study.final.seeds={list(final.seeds)}: planning seeds needs a pilot of at least 2 seeds")
        if final.max_seeds is None or final.max_seeds < final.min_seeds:
            raise ConfigError(f"study.final.max_seeds={final.max_seeds} must be set and at least study.final.min_seeds={final.min_seeds}")
    elif final.max_seeds is not None:
        raise ConfigError(f"study.final.max_seeds={final.max_seeds} needs study.final.min_seeds (planning is off without it)")
    if cfg.margin is not None and not 0 < cfg.margin < 100:
        raise ConfigError(f"study.margin={cfg.margin} must be a positive difference in points of test error, e.g. 0.1")
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


def refined_rates(grid: list[float], selected: float) -> list[float]:
    """The geometric midpoints between the grid's `selected` rate and its neighbours (one at an
    end of the grid), at the grid's 3 significant digits: the second round of a variant's
    search, so that every variant's optimum is resolved to a quarter decade, not half of one."""
    rates = sorted(grid)
    at = rates.index(selected)
    neighbours = rates[max(at - 1, 0) : at] + rates[at + 1 : at + 2]
    return [float(f"{math.sqrt(selected * other):.3g}") for other in neighbours]


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
    preset_passes: int  # trainer.max_epochs as the variant's preset sets it


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
    from .identity import run_name

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
        variants.append(
            Variant(list(overrides), label, select(cfg, "optim.name"), int(cfg.data.train_subset), int(cfg.trainer.max_epochs))
        )
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
    from .identity import config_hash

    return config_hash(compose_config(overrides))


def runs_by_hash(client, experiment_id: str) -> dict[str, Any]:
    """{config_hash: run} over the experiment: the FINISHED run of each hash, else one that
    FAILED because its loss diverged (a result of the rate: the same config fails the same way)."""
    from .tracking import list_runs  # MLflow and Lightning: not for `--help` or a refused command line

    found: dict[str, Any] = {}
    for run in list_runs(client, experiment_id):
        job_hash = run.data.tags.get("config_hash")
        if job_hash is None:
            continue
        if run.info.status == "FINISHED":
            found[job_hash] = run
        elif run.info.status == "FAILED" and run.data.tags.get("failure_reason", "").startswith(DIVERGED):
            found.setdefault(job_hash, run)
    return found


def final_seeds(pilot: list[int], n: int) -> list[int]:
    """A variant's first `n` final seeds: the pilot's, then the lowest seeds not among them, so
    that the seeds of a smaller plan are a prefix of a larger one's."""
    others = (seed for seed in itertools.count() if seed not in pilot)
    return list(pilot[:n]) + list(itertools.islice(others, max(0, n - len(pilot))))


def study_id_of(cfg: Any, variants: list[Variant], run_args: list[str]) -> str:
    """Same variants, settings and run.py arguments (in any order) -> same id. What does not
    change what is trained is left out (launchers, `trainer.compile`, `trainer.progress_bar`,
    `tracking.*`, `study.out`), so a study resumed with another of those is the same study."""
    from .config import is_scientific_key

    def scientific(overrides: list[str]) -> list[str]:
        return [o for o in overrides if is_scientific_key(_key(o))]

    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in ("out", "plan"):  # where the report goes, and whether this launch only plans
        settings.pop(key, None)
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
        from .store import artifact_location
        from .tracking import get_or_create_experiment

        self.cfg, self.variants, self.run_args, self.preset = cfg, variants, run_args, preset
        first = compose_config(variants[0].overrides)
        self.uri, self.experiment = str(first.tracking.uri), str(first.tracking.experiment)
        self.heartbeat_s = float(first.tracking.heartbeat_s)
        self.dataset = select(first, "data.dataset")
        self.client = MlflowClient(self.uri)
        self.experiment_id = get_or_create_experiment(self.client, self.experiment, artifact_location(self.uri, first.tracking.artifact_root))
        self.study_id = study_id_of(cfg, variants, run_args)
        base = next((a.split("=", 1)[1] for a in hydra_args if _key(a) == "hydra.sweep.dir"), None)
        self.dir = Path(base) if base else Path("multirun") / f"study_{self.study_id}"
        self.hydra_args = [a for a in hydra_args if _key(a) != "hydra.sweep.dir"]
        self.errors: dict[str, str] = {}
        self._known: dict[str, Any] | None = None  # runs_by_hash, read again after each launch

    # --- MLflow ------------------------------------------------------------------------

    def open_parent(self) -> str:
        """The study's parent run (created once, found again by its id on a re-run), RUNNING."""
        from .identity import flatten_config

        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.study_id = '{self.study_id}' and tags.`{STUDY_PARENT_TAG}` = 'true'", max_results=1
        )
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        command = " ".join(["python -m lenet5.study", *self.run_args])
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"study {self.preset} {self.study_id}",
            tags={STUDY_PARENT_TAG: "true", "study_id": self.study_id, "study.command": command, "study.variants": str(len(self.variants))},
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
            self.client.set_tag(parent, STUDY_REUSED_TAG + self.study_id, "true")
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

    def tag_parents(self, jobs: list[Job], variant: Variant) -> None:
        """Give the stage parents that hold `jobs` (`tune paper`, `final paper`, ...) the
        variant's `study.variant` tag too. The MLflow UI lists a matched run's parent beside
        it; tagged, grouping by `study.variant` puts the parent in its variant's group rather
        than in a group of its own (docs/studies.md#comparing-a-studys-variants-in-the-mlflow-ui).
        Only stage parents (tag `stage`, one variant each) are tagged: a plain sweep's parent,
        whose runs a study may reuse, can hold several variants."""
        parents = {job.run.data.tags.get("mlflow.parentRunId") for job in jobs if job.run is not None} - {None, self.parent_run_id}
        for parent in sorted(parents):
            tags = self.client.get_run(parent).data.tags
            if "stage" in tags and tags.get("study.variant") != variant.label:
                self.client.set_tag(parent, "study.variant", variant.label)

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

    def tuning_rounds(self, variant: Variant, complete: Any) -> dict[str, dict[tuple[float, int], Job]]:
        """The variant's tuning jobs by round: the grid, then (study.tune.refine) the midpoints
        around the grid's selection. `complete(round, jobs)` fills each round's `Job.run`, by
        training what is missing (`tune`) or by looking in the store only (`plan_only`)."""
        from analysis.tuning import select_rates

        grid = lr_grid(self.cfg, variant.optim)
        seeds = list(self.cfg.tune.seeds)
        rounds = {"grid": self.stage_jobs(tune_overrides, variant, grid, seeds)}
        complete("tune", rounds["grid"])
        if self.cfg.tune.refine:
            import pandas as pd

            picked = select_rates(pd.DataFrame(self.trial_rows(variant, rounds)))
            if len(picked):  # a grid with a missing trial is finished first, on the next launch
                extra = [lr for lr in refined_rates(grid, float(picked["selected_lr"].iloc[0])) if lr not in grid]
                rounds["refine"] = self.stage_jobs(tune_overrides, variant, extra, seeds)
                complete("refine", rounds["refine"])
        return rounds

    def tune(self, index: int, variant: Variant) -> list[dict]:
        """Run the tuning of one variant; returns its trials (rows of analysis.tuning's frame)."""
        rounds = self.tuning_rounds(variant, lambda stage, jobs: self.run_missing(stage, index, variant, jobs))
        jobs = [job for round_jobs in rounds.values() for job in round_jobs.values()]
        tuning_id = hashlib.sha1(json.dumps(sorted(j.config_hash for j in jobs)).encode()).hexdigest()[:10]
        for name, round_jobs in rounds.items():
            tags = {"stage": "tune", "tune.id": tuning_id, "tune.round": name, "study.variant": variant.label}
            self.tag_runs(list(round_jobs.values()), tags)
        self.tag_parents(jobs, variant)
        return self.trial_rows(variant, rounds, tuning_id)

    def trial_rows(self, variant: Variant, rounds: dict[str, dict[tuple[float, int], Job]], tuning_id: str = "") -> list[dict]:
        low, high = self.cfg.tune.lr_range[variant.optim]
        return [
            {
                "variant": variant.label, "optim": variant.optim, "lr": lr, "seed": seed, "status": job.status,
                # The last pass's validation error; a tuning run logs no test metric (data.test=false).
                "val_error": job.run.data.metrics.get("val_error", math.nan) if job.status == "finished" else math.nan,
                "run_id": job.run.info.run_id if job.run is not None else None,
                "low": low, "high": high, "passes": self.cfg.tune.passes,
                "train_images": variant.train_subset or 60_000 - self.cfg.tune.val_size,
                "tune_id": tuning_id, "round": name,
            }
            for name, jobs in rounds.items()
            for (lr, seed), job in jobs.items()
        ]  # fmt: skip

    def final_jobs(self, variant: Variant, selected: Any, seeds: list[int]) -> dict[tuple[float, int], Job]:
        """The finals of `seeds` at the variant's selected rate, looked up in the store (none launched)."""
        jobs = self.stage_jobs(final_overrides, variant, [float(selected["selected_lr"])], seeds)
        self.lookup(jobs)
        return jobs

    def final(self, index: int, variant: Variant, selected: Any, tuning_id: str, seeds: list[int]) -> list[Job]:
        lr = float(selected["selected_lr"])
        jobs = self.stage_jobs(final_overrides, variant, [lr], seeds)
        self.run_missing("final", index, variant, jobs)
        done = [job for job in jobs.values() if job.status == "finished"]
        self.errors.pop(variant.label, None)  # a later call, over more seeds, says what is left
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
        self.tag_parents(done, variant)
        return done

    # --- the whole study ---------------------------------------------------------------

    def run(self) -> int:
        """Tune every variant, train the pilot seeds of its selection, grow each variant to the
        seeds the pilot plans (study.final.min_seeds), report; exit code 1 when something is left."""
        import pandas as pd

        from analysis.tuning import select_rates, unresolved

        self.parent_run_id = self.open_parent()
        print(f"study {self.study_id}: parent run {self.parent_run_id} in experiment '{self.experiment}'", flush=True)
        try:
            trials, tuning_ids = [], {}
            for index, variant in enumerate(self.variants):
                rows = self.tune(index, variant)
                trials += rows
                tuning_ids[variant.label] = rows[0]["tune_id"]
            trials = pd.DataFrame(trials)
            selection = select_rates(trials)
            self.errors |= unresolved(trials)
            chosen = selection.set_index("variant")
            selected = [(i, v) for i, v in enumerate(self.variants) if v.label in chosen.index]
            pilot = list(self.cfg.final.seeds)
            done = {v.label: self.final(i, v, chosen.loc[v.label], tuning_ids[v.label], pilot) for i, v in selected}
            if self.cfg.final.min_seeds is not None:
                done = self.grow(selected, chosen, tuning_ids, done)
            finals = {job.run.info.run_id: label for label, jobs in done.items() for job in jobs}
            self.report(trials, selection, finals)
        finally:
            self.client.set_tag(self.parent_run_id, "study.errors", str(len(self.errors)))
            self.client.set_terminated(self.parent_run_id, "FINISHED")
        for label, why in self.errors.items():
            print(f"error: {label}: {why}", file=sys.stderr)
        return 1 if self.errors else 0

    # --- seeds on demand -------------------------------------------------------------

    def grow(self, selected: list[tuple[int, Variant]], chosen: Any, tuning_ids: dict[str, str], pilots: dict[str, list[Job]]) -> dict[str, list[Job]]:
        """The finals after the pilot (`pilots`: each variant's finished pilot finals). First
        study.final.min_seeds seeds for every variant whose pilot has finished, which every plan
        gives it; then, once every pilot has finished (waiting for those another launch of the
        study trains), the seeds planned from all of them. Planning from only the pilots this
        launch saw finished would plan a smaller family and leave the launch idle while the
        others still train. Returns each variant's finished finals."""
        pilot, pilots = list(self.cfg.final.seeds), dict(pilots)

        def train(index: int, variant: Variant, seeds: list[int]) -> list[Job]:
            return self.final(index, variant, chosen.loc[variant.label], tuning_ids[variant.label], seeds)

        done = dict(pilots)
        for i, v in selected:
            if len(pilots[v.label]) == len(pilot):
                done[v.label] = train(i, v, final_seeds(pilot, self.cfg.final.min_seeds))
        short = [(i, v) for i, v in selected if len(pilots[v.label]) < len(pilot)]
        self.wait_for_others({v.label: self.final_jobs(v, chosen.loc[v.label], pilot) for _, v in short})
        for i, v in short:  # finished by another launch, or trained now where one died
            pilots[v.label] = done[v.label] = train(i, v, pilot)
        complete = {label: jobs for label, jobs in pilots.items() if len(jobs) == len(pilot)}
        plan = self.plan_seeds(complete, self.cfg.final.min_seeds, self.cfg.final.max_seeds)
        if plan is not None:
            print(plan.to_string(index=False), flush=True)
            seeds_of = dict(zip(plan["variant"], plan["seeds"]))
            for i, v in selected:
                if v.label in seeds_of:
                    done[v.label] = train(i, v, seeds_of[v.label])
        return done

    def wait_for_others(self, jobs_of: dict[str, dict[Any, Job]]) -> None:
        """Return once no job in `jobs_of` (variant label: its jobs) is being trained by a live
        process (resume.being_trained), reading the store again every tracking.heartbeat_s."""
        from .resume import being_trained

        def in_flight(jobs: dict[Any, Job]) -> bool:
            return any(
                being_trained(self.client, self.experiment_id, job.config_hash, self.heartbeat_s)
                for job in jobs.values() if job.status == "missing"
            )  # fmt: skip

        shown: list[str] = []
        while True:
            self._known = None
            for jobs in jobs_of.values():
                self.lookup(jobs)
            busy = [label for label, jobs in jobs_of.items() if in_flight(jobs)]
            if not busy:
                return
            if busy != shown:
                print(f"study {self.study_id}: waiting for the pilot finals of {', '.join(busy)}, which another launch "
                      "trains: the seeds are planned from every pilot", flush=True)  # fmt: skip
                shown = busy
            time.sleep(self.heartbeat_s)

    def margin(self) -> float:
        from analysis.stats import MARGINS

        return float(self.cfg.margin) if self.cfg.margin is not None else MARGINS[self.dataset]

    def plan_seeds(self, pilot: dict[str, list[Job]], min_seeds: int, max_seeds: int) -> Any:
        """How many seeds each variant gets, from the pilot's paired differences with the
        baseline (the study's first variant): a comparison the pilot decides gets
        study.final.min_seeds; an undecided one the seeds that its observed spread says would
        decide it (analysis.stats.verdicts), within [min_seeds, max_seeds]; the baseline the
        most of these. Only the pilot seeds are read, so once every pilot has finished the plan is
        the same on every launch: seeds are planned once, then all of them are analysed once (no
        adding seeds until p drops). `grow` waits for every pilot another launch trains; given
        fewer (a pilot diverged, or study.plan=true before all finished) it plans those, over a
        smaller family with less strict levels, so never more seeds than the full plan (a prefix
        of its seeds). None (with an error recorded) while the baseline's or every
        variant's pilot is incomplete. A DataFrame: variant, pilot n, diff, verdict, seeds
        needed, seeds (list)."""
        import pandas as pd

        from analysis.stats import verdicts

        baseline = self.variants[0].label
        if baseline not in pilot or len(pilot) < 2:
            self.errors["plan"] = f"the pilot's finals ({baseline} and at least one variant) are not all finished; run the command again"
            return None

        def errors_of(label: str) -> dict[int, float]:
            return {int(job.run.data.params["seed"]): job.run.data.metrics["test_error"] for job in pilot[label]}

        if (factorial := self.factorial_plan(pilot, min_seeds, max_seeds)) is not None:
            return factorial if len(factorial) else None
        base = errors_of(baseline)
        differences = {}
        for label in pilot:
            if label != baseline:
                mine = errors_of(label)
                differences[label] = [mine[seed] - base[seed] for seed in sorted(base)]
        table = verdicts(differences, self.margin())
        counts = {}
        for label, row in table.iterrows():
            needed = row["seeds_needed"]
            counts[label] = min_seeds if math.isnan(needed) else int(min(max(needed, min_seeds), max_seeds))
        counts = {baseline: max(counts.values()), **counts}
        pilot_seeds = list(self.cfg.final.seeds)
        rows = []
        for label, n in counts.items():
            decided = table.loc[label] if label in table.index else None
            rows.append({
                "variant": label, "pilot n": len(pilot_seeds),
                "diff (pp)": "baseline" if decided is None else f"{decided['diff']:+.3f}",
                "verdict": "" if decided is None else decided["verdict"],
                "seeds needed": "" if decided is None or math.isnan(decided["seeds_needed"]) else (
                    "no n" if math.isinf(decided["seeds_needed"]) else str(int(decided["seeds_needed"]))),
                "seeds": final_seeds(pilot_seeds, n),
            })  # fmt: skip
        return pd.DataFrame(rows)

    def factorial_plan(self, pilot: dict[str, list[Job]], min_seeds: int, max_seeds: int) -> Any:
        """When the variants are the cells of a factorial (analysis.factorial), its plan: every
        cell the same seeds, as many as its undecided main effects and two-way interactions need
        (analysis.factorial.planned_seeds), printed with those contrasts; an empty frame (with an
        error recorded) while some cell's pilot is missing; None for a study that is no factorial."""
        import pandas as pd

        from analysis.factorial import factorial_design, planned_seeds
        from analysis.runs import FACTORS

        rows = [
            {"variant": label, "seed": int(job.run.data.params["seed"]), "test_error": job.run.data.metrics["test_error"],
             **{f: job.run.data.tags.get(f"ablation.{f}") for f in FACTORS}}
            for label, jobs in pilot.items() for job in jobs
        ]  # fmt: skip
        frame = pd.DataFrame(rows)
        if frame.empty or factorial_design(frame) is None:
            return None
        try:
            n, contrasts = planned_seeds(frame, self.margin(), min_seeds, max_seeds)
        except ValueError as err:
            self.errors["plan"] = f"{err} Run the command again once every cell's pilot has finished."
            return pd.DataFrame()
        print(f"study {self.study_id}: the factorial's plan from its pilot: {n} seeds in every cell", flush=True)
        print(contrasts.to_string(index=False), flush=True)
        seeds = final_seeds(list(self.cfg.final.seeds), n)
        return pd.DataFrame(
            [{"variant": label, "pilot n": len(self.cfg.final.seeds), "diff (pp)": "", "verdict": "factorial",
              "seeds needed": str(n), "seeds": seeds} for label in pilot]
        )  # fmt: skip

    def plan_only(self) -> int:
        """study.plan=true: from the runs already in the store, print each comparison's verdict
        on the pilot seeds and the seeds that would decide it; train and record nothing."""
        import pandas as pd

        from analysis.tuning import select_rates, unresolved

        rows = []
        for variant in self.variants:
            rows += self.trial_rows(variant, self.tuning_rounds(variant, lambda _, jobs: self.lookup(jobs)))
        trials = pd.DataFrame(rows)
        chosen = select_rates(trials).set_index("variant")
        for label, why in unresolved(trials).items():
            print(f"{label}: not tuned yet ({why})")
        pilot = {}
        for variant in self.variants:
            if variant.label in chosen.index:
                jobs = self.final_jobs(variant, chosen.loc[variant.label], list(self.cfg.final.seeds))
                finished = [job for job in jobs.values() if job.status == "finished"]
                if len(finished) == len(jobs):
                    pilot[variant.label] = finished
                else:
                    print(f"{variant.label}: {len(jobs) - len(finished)} of its {len(jobs)} pilot finals are not in the store")
        final = self.cfg.final
        # Without planning settings: what each comparison needs, uncapped.
        plan = self.plan_seeds(pilot, final.min_seeds or len(final.seeds), final.max_seeds or 10**6)
        if plan is None:
            print(f"error: {self.errors['plan']}", file=sys.stderr)
            return 1
        print(f"study {self.study_id}: plan from the pilot seeds {list(self.cfg.final.seeds)}, margin ±{self.margin():g} pp")
        print(plan.assign(seeds=[len(s) for s in plan["seeds"]]).to_string(index=False))
        return 0

    def report(self, trials: Any, selection: Any, finals: dict[str, str]) -> None:
        from analysis.runs import ReportError
        from analysis.study_report import write_study_report

        out = Path(self.cfg.out) if self.cfg.out else self.dir / "report"
        try:
            files = write_study_report(
                self.uri, self.experiment, out, trials, selection, finals, f"study {self.study_id}", margin=self.margin()
            )
        except ReportError as err:
            self.errors["report"] = str(err)
            return
        for path in files.values():
            self.client.log_artifact(self.parent_run_id, str(path), "report")
        if "study.md" in files:
            print(files["study.md"].read_text(encoding="utf-8"))
        print(f"study {self.study_id}: report in {out.resolve()} and on parent run {self.parent_run_id}")
        # The MLflow UI cuts the study id off its parent's name: the filter of the README's recipe, whole.
        print(f"study {self.study_id}: its finals in the MLflow UI (README.md, The MLflow UI): "
              f"tags.stage = 'final' and tags.`study.member.{self.study_id}` = 'true'")


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


USAGE = """usage: python -m lenet5.study SWEEP-OR-MULTIRUN [run.py overrides] [study.KEY=VALUE ...] [hydra.* / hydra/launcher=...]

A fair study: tune each variant's learning rate on held-out training images (a grid, then
midpoints around its selection), train its selection over seeds on all training images, test,
and report each comparison with the baseline (the first variant) as better, worse, equivalent
within study.margin, or undecided with the seeds that would decide it.

Variants: the jobs of `python run.py -m <the same arguments>`, seeds set aside:
{presets}
  or one's own multirun, e.g. model.pool=subsample,max model.activation=scaled_tanh,relu

Examples:
  python -m lenet5.study sweep=ofat tracking.experiment=fair_mnist hydra/launcher=stacked hydra.launcher.models_per_process=7 trainer.compile=true
  python -m lenet5.study sweep=ofat tracking.experiment=fair_mnist study.final.min_seeds=10 study.final.max_seeds=16
  python -m lenet5.study sweep=ofat tracking.experiment=fair_mnist study.plan=true     # plan seeds from the store, train nothing

Every launch prints its plan first; running the same command again trains only what is missing.
The study's settings (study.<key>=value) with their defaults, from {study_file}:

{settings}"""


def usage() -> str:
    presets = []
    paths = sorted((CONF_DIR / "sweep").glob("*.yaml"))
    width = max(len(path.stem) for path in paths)
    for path in paths:
        comment = next((line.lstrip("# ").strip() for line in path.read_text().splitlines()[1:] if line.startswith("#")), "")
        presets.append(f"  sweep={path.stem:<{width}} {comment}")
    return USAGE.format(presets="\n".join(presets), study_file=STUDY_FILE.relative_to(PROJECT_DIR), settings=STUDY_FILE.read_text().rstrip())


def describe(cfg: Any, variants: list[Variant], study_label: str) -> str:
    """The plan of a launch, printed before anything trains: variants, trials, seeds and the
    training images they amount to (an upper bound: finished runs in the store are skipped)."""
    tune, final = cfg.tune, cfg.final
    passes = {variant.label: final.passes or variant.preset_passes for variant in variants}
    refine = 2 if tune.refine else 0
    tune_runs = (tune.trials + refine) * len(tune.seeds) * tune.passes
    tune_images = sum(tune_runs * (variant.train_subset or 60_000 - tune.val_size) for variant in variants)
    seeds = final.max_seeds if final.min_seeds is not None else len(final.seeds)
    lines = [f"{study_label}: {len(variants)} variant(s); the first, '{variants[0].label}', is the baseline"]
    for variant in variants:
        grid = lr_grid(cfg, variant.optim)
        lines.append(f"  {variant.label}  [{variant.optim} lr {grid[0]:g} .. {grid[-1]:g}, {passes[variant.label]} final passes]")
    lines.append(
        f"  tune: {tune.trials} rates{f' + up to {refine} refined' if refine else ''} x {len(tune.seeds)} seed(s) x "
        f"{tune.passes} passes on {variants[0].train_subset or 60_000 - tune.val_size:,} images, selected on the last "
        f"{tune.val_size:,} training images"
    )
    if final.min_seeds is None:
        lines.append(f"  final: seeds {list(final.seeds)} on all {variants[0].train_subset or 60_000:,} training images, tested")
    else:
        lines.append(
            f"  final: pilot seeds {list(final.seeds)}, then {final.min_seeds} to {final.max_seeds} seeds a variant as the "
            f"pilot plans (margin {'the dataset default' if cfg.margin is None else f'±{cfg.margin:g} pp'})"
        )
    final_images = sum(seeds * passes[variant.label] * (variant.train_subset or 60_000) for variant in variants)
    images = tune_images + final_images
    lines.append(
        f"  at most {images / 1e6:,.1f} million training images (tuning {tune_images / 1e6:,.1f}, finals {final_images / 1e6:,.1f}): about {images / IMAGES_PER_CORE_SECOND / 3600:,.1f} core-hours at "
        f"{IMAGES_PER_CORE_SECOND:,} images/s a core (compiled SDLM stacks, batch 4); runs already in the store are skipped"
    )
    return "\n".join(lines)


#: Training throughput of one CPU core in a compiled stack of SDLM models at batch 4, measured
#: on this project's 2-core machine (docs: a 5-stack passed 5 x 50,000 images in 471 s on 2 cores).
IMAGES_PER_CORE_SECOND = 1_100


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    register_stacked_launcher()  # hydra/launcher=stacked, before anything composes
    if not argv or any(arg in ("-h", "--help") for arg in argv):
        print(usage())
        if argv:
            return 0
        print("error: no variants given: name a sweep (sweep=ofat) or a multirun of run.py overrides", file=sys.stderr)
        return 2
    try:
        unknown = [arg for arg in argv if arg.startswith("-") and arg not in ("-m", "--multirun")]
        if unknown:
            raise ConfigError(f"{unknown[0]} is not an option of the study; it takes run.py overrides and study.* settings (--help)")
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
        if cfg.plan:
            return study.plan_only()
        print(describe(cfg, variants, f"study {study.study_id} ({study.preset})"), flush=True)
        return study.run()
    except ConfigError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
