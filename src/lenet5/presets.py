"""What each `experiment=` preset chooses, read by composing it with Hydra."""

from __future__ import annotations

from functools import lru_cache

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from .config import CONF_DIR, factor_values


def compose_config(overrides: list[str], with_hydra: bool = False):
    """The config `python run.py <overrides>` would run, without running it
    (`with_hydra`: keep the `hydra` node, e.g. to read a sweep preset's params)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)


@lru_cache(maxsize=None)
def preset_factors(experiment: str) -> dict[str, str]:
    """The ablation factors as preset `experiment` sets them ({} for a config of no preset)."""
    if experiment == "custom":
        return {}
    return factor_values(compose_config([f"experiment={experiment}"]))
