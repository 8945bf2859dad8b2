"""Checks of a composed config beyond what its types catch, each a one-line ConfigError.

The schema (config.py) rejects unknown choices and wrong types while Hydra composes;
`check_compatible` rejects combinations. What is left is caught here, before anything is
recorded or trained: keys added with `+` that the schema does not know, numbers that are
not finite or out of a meaningful range, a device this machine lacks, and launcher
settings that would fail only once the sweep has started.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import Augment, Config, ConfigError, Preprocess, check_compatible

#: Accelerator names Lightning accepts (`gpu` picks CUDA or MPS, whichever the machine has).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def check_config(cfg: Any) -> None:
    """Every check of a job's composed config (not its data or its store); raise ConfigError."""
    check_known_keys(cfg)
    check_finite(cfg)  # first: nan fails every comparison, so later checks would misname it
    check_compatible(cfg)
    check_ranges(cfg)
    check_distortion(cfg)
    check_device(cfg)


# --- keys ------------------------------------------------------------------------------


def schema_keys(schema: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema dataclass (`model.pool`, `optim.betas`, ...), leaves and nodes."""
    keys = []
    for field in dataclasses.fields(schema):
        key = prefix + field.name
        keys.append(key)
        kind = typing.get_type_hints(schema)[field.name]  # config.py's annotations are strings
        if dataclasses.is_dataclass(kind):
            keys += schema_keys(kind, key + ".")
    return keys


def _config_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every key of a composed config, nodes and leaves."""
    found = []
    for key in node.keys():
        value = node[key]
        found.append((prefix + str(key), value))
        if isinstance(value, DictConfig):
            found += _config_keys(value, f"{prefix}{key}.")
    return found


def check_known_keys(cfg: Any) -> None:
    """Reject keys the schema does not define.

    Hydra's `+key=value` (and `++`) adds a key with the config's struct flag lifted, so the
    schema cannot refuse it during composition; a typo would then be silently ignored.
    """
    known = schema_keys()
    for key, node in _config_keys(cfg):
        if key in known:
            continue
        value = OmegaConf.to_container(node) if isinstance(node, DictConfig) else node
        nearest = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {nearest[0]}?" if nearest else "`python run.py --cfg job` lists every key"
        raise ConfigError(f"{key}={value} is not a config key (a key added with + must exist in the schema); {hint}")


# --- numbers ---------------------------------------------------------------------------


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every number in a plain container, list items as key[i]."""
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, f"{prefix.rstrip('.')}[{i}].")]
    return [(prefix.rstrip("."), node)]


def check_finite(cfg: Any) -> None:
    """nan and inf parse as floats, and every float of the schema must be a real number."""
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")


def _require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} {what}")


def check_ranges(cfg: Any) -> None:
    """Values each valid for their type that no run can use (checked for every optimizer and
    schedule: a meaningless value is a mistake even where it would be ignored)."""
    from .data import MNIST_TEST_SIZE  # torch: not imported before the command line parses (cli.py)

    optim, data = cfg.optim, cfg.data
    positive = ("trainer.max_epochs", "data.batch_size", "data.eval_batch_size", "model.c1_kernel", "model.f6_width", "optim.lr")
    for key in positive:
        _require(OmegaConf.select(cfg, key) > 0, key, OmegaConf.select(cfg, key), "must be positive")
    non_negative = ("data.train_subset", "data.val_size", "data.test_subset", "loss.j", "data.distorted_copies", "data.patterns_per_pass")
    for key in non_negative:
        _require(OmegaConf.select(cfg, key) >= 0, key, OmegaConf.select(cfg, key), "must be >= 0")
    _require(0 <= optim.momentum < 1, "optim.momentum", optim.momentum, "must be in [0, 1)")
    for i, beta in enumerate(optim.betas):
        _require(0 <= beta < 1, f"optim.betas[{i}]", beta, "must be in [0, 1)")
    _require(len(optim.betas) == 2, "optim.betas", list(optim.betas), "must be two numbers, e.g. [0.9,0.999]")
    _require(optim.weight_decay >= 0, "optim.weight_decay", optim.weight_decay, "must be >= 0")
    # SDLM steps by eta / (mu + h_kk) with h_kk >= 0 and often ~0: mu must keep it finite.
    _require(optim.mu > 0, "optim.mu", optim.mu, "must be positive (SDLM divides by mu + h_kk)")
    _require(optim.curvature_samples > 0, "optim.curvature_samples", optim.curvature_samples, "must be positive")
    _require(optim.curvature_every >= 0, "optim.curvature_every", optim.curvature_every, "must be >= 0 (0: only before each pass)")
    _require(0 <= optim.curvature_gamma <= 1, "optim.curvature_gamma", optim.curvature_gamma, "must be in [0, 1] (0: no running average)")
    gain = cfg.model.init_gain
    _require(gain is None or gain > 0, "model.init_gain", gain, "must be positive, or null for the init rule's own")
    _require(optim.step_epochs > 0, "optim.step_epochs", optim.step_epochs, "must be positive")
    _require(optim.gamma > 0, "optim.gamma", optim.gamma, "must be positive")
    _require(
        data.test_subset <= MNIST_TEST_SIZE, "data.test_subset", data.test_subset,
        f"asks for more than the {MNIST_TEST_SIZE} MNIST test images (0 = all of them)",
    )  # fmt: skip
    _require(
        data.test or data.val_size > 0, "data.test", data.test,
        "with data.val_size=0 evaluates nothing; hold out a validation split (data.val_size=10000) or use data.test=true",
    )  # fmt: skip
    if cfg.data.augment == Augment.paper:
        _require(
            data.distorted_copies >= 1, "data.distorted_copies", data.distorted_copies,
            "with data.augment=paper adds no distorted image; use data.distorted_copies>=1 or data.augment=none",
        )  # fmt: skip
    shown = cfg.tracking.misclassified_shown
    _require(shown >= 0, "tracking.misclassified_shown", shown, "must be >= 0")
    heartbeat = cfg.tracking.heartbeat_s
    _require(math.isfinite(heartbeat) and heartbeat > 0, "tracking.heartbeat_s", heartbeat, "must be a positive number of seconds")


def check_distortion(cfg: Any) -> None:
    """The distortion half-widths must keep every affine map invertible and the digit in view."""
    d = cfg.data.distortion
    size = 32 if cfg.data.preprocess == Preprocess.paper else 28
    # scale and squeeze draw factors in 1 +- w: w >= 1 allows a factor <= 0 (a singular map).
    for name in ("scale", "squeeze"):
        _require(0 <= d[name] < 1, f"data.distortion.{name}", d[name], "must be in [0, 1) (factors are drawn in 1 +- it)")
    _require(0 <= d.translate < size, "data.distortion.translate", d.translate, f"must be in [0, {size}) pixels")
    # A shear of 1 tilts verticals by 45 degrees; more turns the digit into a streak.
    _require(0 <= d.shear <= 1, "data.distortion.shear", d.shear, "must be in [0, 1]")


# --- device ----------------------------------------------------------------------------


def _available(accelerator: str) -> bool:
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    available = {
        "cuda": CUDAAccelerator.is_available,
        "mps": MPSAccelerator.is_available,
        "gpu": lambda: CUDAAccelerator.is_available() or MPSAccelerator.is_available(),
        "tpu": XLAAccelerator.is_available,
    }
    return accelerator not in available or available[accelerator]()


def check_device(cfg: Any) -> None:
    """An accelerator the machine has, on one device (Lightning would raise a traceback later),
    and a `trainer.compile` choice."""
    from .compile import COMPILE_CHOICES, compile_setting

    if compile_setting(cfg) not in COMPILE_CHOICES:
        raise ConfigError(f"trainer.compile={cfg.trainer.compile} is not a choice; valid choices: {', '.join(COMPILE_CHOICES)}")
    accelerator, devices = str(cfg.trainer.accelerator), str(cfg.trainer.devices)
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator} is not a choice; valid choices: {', '.join(ACCELERATORS)}")
    if not _available(accelerator):
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no such device that PyTorch can use; "
            f"use trainer.accelerator=auto (the best device present) or cpu"
        )
    # The data sit on one device and batches are served by index (batches.py), with no
    # distributed sampler: several devices would each train on all the data.
    if devices not in ("auto", "1"):
        raise ConfigError(
            f"trainer.devices={devices} is not supported: a run trains on one device; use trainer.devices=auto or 1 "
            f"(pick the GPU with CUDA_VISIBLE_DEVICES)"
        )


# --- launcher --------------------------------------------------------------------------


def check_launcher(hydra_cfg: Any) -> None:
    """Launcher settings that fail only once the sweep has started (joblib's n_jobs=0)."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if n_jobs is not None and n_jobs == 0:
        raise ConfigError(
            "hydra.launcher.n_jobs=0 runs no job; use the number of jobs to run side by side (e.g. 2), or -1 for one per core"
        )
    per_process = OmegaConf.select(hydra_cfg, "launcher.models_per_process", default=None)
    if per_process is not None and per_process < 1:
        raise ConfigError(
            f"hydra.launcher.models_per_process={per_process} must be >= 1 (the most models one process trains side by side; 1: each job alone)"
        )
