"""The config schema: every ablation factor is a typed, validated choice.

Hydra composes `conf/` on top of these dataclasses (registered in the ConfigStore as
`schema`), so an unknown choice (`model.pool=maxx`) or a wrong type
(`trainer.max_epochs=abc`) is rejected while the config is composed, before any code
runs. Combinations that are each valid alone but meaningless together
(`loss=map` with `model.head=softmax`) are rejected by `check_compatible`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

#: The repository root (src/lenet5/config.py -> ../../). The default MLflow store lives here
#: so that every run of every job, wherever Hydra puts its outputs, lands in one store.
PROJECT_DIR = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_DIR / "conf"
#: The suite's own store, `tracking.uri`'s default resolved (see TrackingConfig).
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"


class ConfigError(ValueError):
    """A config that composes but cannot be trained; the message is one line for the user."""


class Pool(enum.StrEnum):
    subsample = "subsample"  # paper: 2x2 sum x trainable coefficient + trainable bias
    max = "max"
    avg = "avg"


class Activation(enum.StrEnum):
    scaled_tanh = "scaled_tanh"  # paper: 1.7159 tanh(2a/3)
    tanh = "tanh"
    sigmoid = "sigmoid"
    relu = "relu"
    none = "none"


class ActivationAt(enum.StrEnum):
    """Where the squashing function sits around each pooling layer."""

    both = "both"  # paper: after every convolution and after every subsampling
    before_pool = "before_pool"  # conv -> f -> pool (modern code, the TF tutorial)
    after_pool = "after_pool"  # conv -> pool -> f (the TF tutorial's open question)


class C3(enum.StrEnum):
    table = "table"  # paper Table I: each C3 map sees 3, 4 or 6 S2 maps
    full = "full"


class Head(enum.StrEnum):
    rbf = "rbf"  # fixed 7x12 bitmaps, Euclidean distance
    softmax = "softmax"  # linear F6 -> 10 logits


class Init(enum.StrEnum):
    lecun = "lecun"  # paper: U(-2.4/F, 2.4/F)
    lecun_sqrt = "lecun_sqrt"  # U(-1/sqrt(F), 1/sqrt(F)), biases too
    lush = "lush"  # LeCun and Bottou's Lush code: U(+-1/sqrt(F)) weights, S coefficients 0.5, biases 0
    default = "default"  # PyTorch's own
    truncated_normal = "truncated_normal"  # TF tutorial: N(0, 1) truncated at 2 std, biases too


class Dataset(enum.StrEnum):
    mnist = "mnist"  # paper
    fashion_mnist = "fashion_mnist"  # Xiao et al. 2017: MNIST's format, ten kinds of clothing


class Preprocess(enum.StrEnum):
    paper = "paper"  # pad to 32x32, background -0.1, foreground 1.175
    unit = "unit"  # the tutorials': 28x28, pixels in [0, 1]


class Augment(enum.StrEnum):
    none = "none"
    paper = "paper"  # fixed random affine distortions of each training image (section III.C)


class LossName(enum.StrEnum):
    map = "map"  # paper eq. 9
    mle = "mle"  # paper eq. 8
    cross_entropy = "cross_entropy"


class Reduction(enum.StrEnum):
    mean = "mean"
    sum = "sum"  # both tutorials sum the loss over the batch


class OptimName(enum.StrEnum):
    sdlm = "sdlm"  # paper, Appendix C: stochastic diagonal Levenberg-Marquardt
    sgd = "sgd"
    adam = "adam"


class Schedule(enum.StrEnum):
    paper = "paper"  # Appendix C's per-pass steps, relative to pass 1: x1 x2, x0.4 x3, x0.2 x3, x0.1 x4, then x0.02
    constant = "constant"
    cosine = "cosine"
    step = "step"


@dataclass
class ModelConfig:
    pool: Pool = Pool.subsample
    activation: Activation = Activation.scaled_tanh
    activation_at: ActivationAt = ActivationAt.both
    c3: C3 = C3.table
    head: Head = Head.rbf
    init: Init = Init.lecun
    #: Numerator v of the init bound (v/F for lecun, v/sqrt(F) for lecun_sqrt and lush);
    #: null = the rule's own (2.4 for lecun, 1 for the others).
    init_gain: Optional[float] = None
    # Geometry knobs that make the tutorial systems presets of the same builder.
    c1_kernel: int = 5
    c1_padding: int = 0
    c3_padding: int = 0
    c5_padding: int = 0
    f6_width: int = 84


@dataclass
class DistortionConfig:
    """Half-widths of the uniform ranges of the paper's planar affine distortions."""

    translate: float = 2.0  # pixels, horizontally and vertically
    scale: float = 0.1  # factor 1 +- this
    squeeze: float = 0.1  # x by 1 +- this, y by its inverse
    shear: float = 0.2  # horizontal shear, x += shear * y


@dataclass
class DataConfig:
    #: Which images: MNIST, or Fashion-MNIST (same format, under <root>/FashionMNIST/raw/).
    dataset: Dataset = Dataset.mnist
    #: Folder holding MNIST/raw/ (and FashionMNIST/raw/; torchvision's layout); `$MNIST_ROOT` when set, else ./data.
    root: str = "${oc.env:MNIST_ROOT,${project_dir:}/data}"
    #: Fetch the dataset when files are missing (never happens when they are present and verified).
    download: bool = True
    preprocess: Preprocess = Preprocess.paper
    #: Train on the first N training images (0 = all 60,000 minus the validation split).
    train_subset: int = 0
    #: Hold out the last N training images for validation (0 = the paper's protocol).
    val_size: int = 0
    #: Evaluate on the first N test images (0 = all 10,000). Tests use it to stay fast.
    test_subset: int = 0
    #: false: the test split is never loaded or evaluated (a tuning run selects on val_error,
    #: so no test number exists that could steer the choice); needs data.val_size > 0.
    test: bool = True
    batch_size: int = 32
    eval_batch_size: int = 2000
    augment: Augment = Augment.none
    #: Distorted copies of each training image (paper: 9, i.e. 540,000 added to 60,000).
    distorted_copies: int = 9
    distortion: DistortionConfig = field(default_factory=DistortionConfig)
    #: Training patterns presented per pass, a fresh random sample of the whole training set
    #: (distortions included) each pass; 0 = every pattern. Lets a schedule defined per pass
    #: of 60,000 run over the 600,000-pattern distorted set.
    patterns_per_pass: int = 0


@dataclass
class LossConfig:
    name: LossName = MISSING
    #: The MAP criterion's constant j: e^(-j) is the 'rubbish class' term of eq. 9.
    j: float = 0.1
    reduction: Reduction = Reduction.mean


@dataclass
class OptimConfig:
    name: OptimName = MISSING
    lr: float = MISSING
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Schedule = Schedule.constant
    #: SDLM: damping mu of eta / (mu + h_kk), and patterns used to re-estimate h_kk before each pass.
    mu: float = 0.02
    curvature_samples: int = 500
    #: SDLM: also re-estimate h_kk every N training patterns within a pass (EBLearn: 4,000);
    #: 0 = only before each pass (paper).
    curvature_every: int = 0
    #: SDLM: > 0 keeps h_kk as SN2.8's running average, h <- gamma * (each pattern's own
    #: curvature) + (1 - gamma) * h, blended in before that pattern's update (SN2.8: 0.05).
    curvature_gamma: float = 0.0
    #: `step` schedule: multiply the rate by `gamma` every `step_epochs` epochs.
    step_epochs: int = 5
    gamma: float = 0.5


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    accelerator: str = "auto"
    devices: str = "auto"
    #: `true` shows Lightning's progress bar; leave it on for interactive runs.
    progress_bar: bool = True
    #: Use deterministic kernels (same config + seed -> same metrics to the last digit).
    deterministic: bool = True
    #: torch.compile the training forward: `auto` (on a CUDA GPU, as CUDA graphs; off on a
    #: CPU), `true` (any device; falls back to eager with a warning if it cannot compile), `false`.
    #: A string, not an enum: Hydra reads `true`/`false` as booleans, which an enum refuses.
    compile: str = "auto"


@dataclass
class TrackingConfig:
    #: Any MLflow tracking URI: the local SQLite store by default, or http://host:5000.
    uri: str = "sqlite:///${project_dir:}/mlflow.db"
    #: Where a new experiment in a local store keeps its artifacts (ignored for a server);
    #: null: `mlartifacts/` beside the SQLite file (store.artifact_location).
    artifact_root: Optional[str] = None
    experiment: str = "lenet5"
    #: Number of misclassified test digits drawn in the artifact grid.
    misclassified_shown: int = 64
    #: In a multirun, skip a job whose identical config and seed already FINISHED in the experiment.
    skip_finished: bool = True
    #: Continue a killed run of the same config and seed from its last completed pass (false: start anew).
    resume: bool = True
    #: Seconds between a training process's heartbeats in its run; a run whose owner missed
    #: 3 in a row is taken over by the next launch of the same job (a server store; a local
    #: store knows at once, from its lock).
    heartbeat_s: float = 30.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    #: Name of the `experiment=` preset this run started from (set by each preset).
    experiment: str = "custom"
    #: Name of the `variant=` delta applied on top of the preset (`none`: the preset as is).
    variant: str = "none"


#: The factors an ablation varies; each becomes an `ablation.<factor>` tag on the run.
ABLATION_FACTORS: dict[str, str] = {
    "pool": "model.pool",
    "activation": "model.activation",
    "activation_at": "model.activation_at",
    "c3": "model.c3",
    "head": "model.head",
    "init": "model.init",
    "loss": "loss.name",
    "optim": "optim.name",
    "preprocess": "data.preprocess",
    "augment": "data.augment",
    "dataset": "data.dataset",
}


#: Config keys that do not change what is trained (where it is logged, how it is shown, where
#: the data lives): left out of the config hash and of the analysis' comparisons.
NON_SCIENTIFIC_KEYS = (
    "tracking", "trainer.progress_bar", "trainer.accelerator", "trainer.devices", "trainer.compile", "data.root", "data.download",
)  # fmt: skip


#: Keys added after runs were recorded, with the value every earlier run trained with. At that
#: value a key is left out of the config hash, so earlier runs keep their hash (a re-run of their
#: sweep still skips them), and the analysis fills it in for runs that lack it.
KEYS_ADDED_LATER = {"data.dataset": "mnist", "data.test": "True"}


def is_scientific_key(key: str, ignored: tuple[str, ...] = NON_SCIENTIFIC_KEYS) -> bool:
    """True for a flattened config key (`optim.lr`) not under any of `ignored` (`tracking.uri` is)."""
    return not any(key == skip or key.startswith(skip + ".") for skip in ignored)


def _register() -> None:
    if not OmegaConf.has_resolver("project_dir"):
        OmegaConf.register_new_resolver("project_dir", lambda: str(PROJECT_DIR))
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="loss", name="schema", node=LossConfig)
    cs.store(group="optim", name="schema", node=OptimConfig)


_register()


def factor_choices() -> dict[str, list[str]]:
    """{config key: its choices, the paper's first} for each ablation factor, read from the schema."""
    import typing

    sections = typing.get_type_hints(Config)
    choices = {}
    for key in ABLATION_FACTORS.values():
        section, name = key.split(".")
        kind = typing.get_type_hints(sections[section])[name]
        choices[key] = [member.value for member in kind]
    return choices


def as_config(cfg: DictConfig) -> Config:
    """The composed config as the typed objects every constructor takes (`Config`, its
    sections' dataclasses, enum members for every choice), interpolations resolved."""
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config), type(config)  # Hydra composes onto the `schema` entry
    return config


def select(cfg: Any, dotted_key: str) -> Any:
    """Value at `dotted_key` as a plain string for enums: the config as recorded and shown
    (run names, tags, the config hash), not for decisions, which compare enum members."""
    value = OmegaConf.select(cfg, dotted_key)
    return value.value if isinstance(value, enum.Enum) else value


def factor_values(cfg: Any) -> dict[str, str]:
    """{"pool": "subsample", "activation": "scaled_tanh", ...}: the ablation factors of `cfg`."""
    return {factor: str(select(cfg, key)) for factor, key in ABLATION_FACTORS.items()}


def check_compatible(cfg: Any) -> None:
    """Reject combinations that compose but cannot train, with one line naming the fix.

    Runs before anything is created in the MLflow store or any data is read.
    """
    head, loss = cfg.model.head, cfg.loss.name
    if loss in (LossName.map, LossName.mle) and head != Head.rbf:
        raise ConfigError(
            f"loss={loss} is defined on RBF distances but model.head={head}; "
            f"use model.head=rbf, or loss=cross_entropy with model.head={head}"
        )
