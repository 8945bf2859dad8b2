"""What identifies a training run: its config as flat params, its config hash, its name and tags.

Pure functions of the composed config, below tracking and resume: the hash is how a sweep or a
study finds a finished job, how a killed job finds its run again, and how a stack groups jobs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from .config import KEYS_ADDED_LATER, factor_values, is_scientific_key

#: Short names used in run names, e.g. "paper pool=max act=relu seed=1".
FACTOR_SHORT_NAMES = {"activation": "act", "activation_at": "act_at", "preprocess": "input"}


def plain_config(cfg: Any) -> dict:
    """The resolved config as plain Python (enums as their names)."""
    return json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))


def flatten_config(cfg: Any) -> dict[str, str]:
    """{"model.pool": "subsample", "optim.lr": "0.01", ...}: the config as MLflow params."""
    flat = pd.json_normalize(plain_config(cfg), sep=".").iloc[0].to_dict()
    return {key: json.dumps(value) if isinstance(value, list) else str(value) for key, value in flat.items()}


def config_hash(cfg: Any, *, include_seed: bool = True) -> str:
    """Short hash of everything that changes what is trained (seed optional).

    Two runs with the same hash trained the same variant on the same data with the same
    recipe; `include_seed=False` groups the seeds of one variant. A key of `KEYS_ADDED_LATER`
    at its earlier value is left out, so runs recorded before it existed keep their hash.
    """
    flat = flatten_config(cfg)
    kept = {
        key: value
        for key, value in flat.items()
        if is_scientific_key(key) and (include_seed or key != "seed") and KEYS_ADDED_LATER.get(key) != value
    }
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def run_name(cfg: Any, preset_factors: dict[str, str] | None = None) -> str:
    """"<experiment> <factor>=<value>... seed=<n>", listing only the factors that differ
    from the preset's own choices (`preset_factors`), never a random name."""
    differing = {
        factor: value
        for factor, value in factor_values(cfg).items()
        if preset_factors is None or preset_factors.get(factor) != value
    }
    parts = [str(cfg.experiment)]
    parts += [f"{FACTOR_SHORT_NAMES.get(factor, factor)}={value}" for factor, value in differing.items()]
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def run_tags(cfg: Any) -> dict[str, str]:
    tags = {f"ablation.{factor}": value for factor, value in factor_values(cfg).items()}
    tags["ablation.experiment"] = str(cfg.experiment)
    tags["ablation.variant"] = str(cfg.variant)
    tags["seed"] = str(cfg.seed)
    tags["config_hash"] = config_hash(cfg)
    tags["variant_hash"] = config_hash(cfg, include_seed=False)
    return tags
