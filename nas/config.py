"""Run configuration: params.yaml supplies the defaults, command-line options override them.

The same file drives `nas search`, `make run` and `dvc repro`, so a result can always be
traced back to the parameters that produced it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from nas.data import parse_shape, source_name
from nas.ids import digest
from nas.secrets import without_password
from nas.space.architecture import ArchitectureError, HParams
from nas.yaml_errors import yaml_problem

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A malformed params.yaml or an impossible option."""


def _require_positive(config: Any, names: tuple[str, ...], section: str = "", minimum: int = 1,
                      optional: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if optional and value is None:
            continue
        if not (type(value) is int and value >= minimum):
            flag = {"dask_workers": "workers"}.get(name, name).replace("_", "-")
            raise ConfigError(f"{section}{name}={value!r} (--{flag}) must be an integer of at least {minimum}.")


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    label_column: str = "label"
    shape: tuple[int, ...] | None = None
    split_seed: int = 0
    data_dir: str | None = None  # default: data/<source name> under the project root

    def resolved_dir(self, root: Path) -> Path:
        return (root / (self.data_dir or Path("data") / source_name(self.source))).resolve()


@dataclass(frozen=True)
class SearchConfig:
    data: DataConfig = field(default_factory=DataConfig)
    space: str = "auto"  # "auto": chosen from the data's shape (nas.space.auto), else a YAML file
    strategy: str = "random"
    trials: int = 20
    epochs: int | None = None  # None: 20, or more on a small table (nas.runner.with_epochs)
    seed: int = 0
    concurrency: int | None = None  # trials at once; None: 2 on a CPU, as many as a GPU's free memory holds
    experiment: str | None = None  # default: the data source's name
    tracking_uri: str | None = None
    max_seconds: float | None = 120.0  # per-trial time limit
    max_params: int | None = None  # overrides the space file's limit
    population: int | None = None  # evolution's population size (default: the strategy's)
    scheduler: str | None = None  # hyperband | successive-halving: the strategy becomes its sampler
    min_epochs: int = 1  # the scheduler's first rung; `epochs` is its last
    eta: int = 3  # the scheduler keeps the best 1/eta of each rung
    asynchronous: bool = False  # tell each result as it finishes instead of in rounds
    from_experiment: str | None = None  # warm-start from this experiment's best runs ...
    top_k: int = 10  # ... this many of them
    init_from: str | None = None  # candidates start from this run's weights, or an experiment's best run's
    controller_lr: float | None = None  # nas-rl's Adam learning rate; None: scaled to the trials
    smash_steps: int | None = None  # SMASH: hypernetwork training steps; None: nas.hyper.STEPS
    smash_candidates: int | None = None  # SMASH: networks scored; None: nas.strategies.smash.CANDIDATES
    warm_start_predictor: bool = False  # predictor: also learn from every run of the store on this data
    optimizer: str | None = None  # pins the space's optimizer, e.g. "learned:<run id>" of `nas meta-train`
    device: str | None = None  # "cpu" or "cuda"; default: cuda when available
    cv: int | None = None  # folds scoring each trial; None: automatic (K-fold below a row threshold), 1: hold-out
    report_test: bool = False  # measure every trial on the test split (benchmarks); else only `nas evaluate` does
    cuda_graphs: bool = True  # replay each trial's training step as a CUDA graph (nas.gpu); off to rule them out
    cluster: str | None = None  # a Dask scheduler's address (tcp://HOST:PORT): trials run on its workers
    dask_workers: int | None = None  # trials on a local Dask cluster of this many worker processes

    def __post_init__(self) -> None:
        if self.tracking_uri:  # the password travels in the environment, never in a record or flow parameter
            object.__setattr__(self, "tracking_uri", without_password(self.tracking_uri))
        _require_positive(self, ("trials", "min_epochs", "top_k"))
        _require_positive(self, ("eta",), minimum=2)  # keeping 1/1 of a rung would never stop
        _require_positive(self, ("population",), minimum=2, optional=True)  # a tournament needs two
        _require_positive(self, ("epochs", "max_params", "cv", "concurrency", "smash_steps", "smash_candidates",
                                 "dask_workers"), optional=True)
        _require_positive(self, ("seed",), minimum=0)
        _require_positive(self.data, ("split_seed",), "data.", minimum=0)
        seconds = self.max_seconds
        if seconds is not None and not (type(seconds) in (int, float) and 0 < seconds < math.inf):
            raise ConfigError(f"max_seconds={seconds!r} (--max-seconds) must be a positive number of seconds, "
                              "the time limit of one trial, e.g. 120.")
        rate = self.controller_lr
        if rate is not None and not (type(rate) in (int, float) and 0 < rate < 1):
            raise ConfigError(f"controller_lr={rate!r} (--controller-lr) must be a learning rate in (0, 1), "
                              "e.g. 0.02.")
        if self.optimizer is not None:
            try:
                HParams(optimizer=self.optimizer)
            except ArchitectureError as error:
                raise ConfigError(f"--optimizer {self.optimizer}: {error}") from None
        if self.device not in (None, "cpu", "cuda"):
            raise ConfigError(f"device={self.device!r} (--device) must be cpu or cuda, or left out.")
        if self.cluster is not None and self.dask_workers is not None:
            raise ConfigError(f"--cluster {self.cluster} and --workers {self.dask_workers} both say where trials run; "
                              "give --cluster to use a running Dask cluster, or --workers to start a local one.")
        if self.cluster is not None and not (isinstance(self.cluster, str) and "://" in self.cluster):
            raise ConfigError(f"cluster={self.cluster!r} (--cluster) must be a Dask scheduler address such as "
                              "tcp://127.0.0.1:8786 (what `dask scheduler` prints).")

    @property
    def workers(self) -> int:
        """Trials at once: `concurrency`, else one per local Dask worker, else the device's default
        (see nas.gpu.default_concurrency)."""
        from nas.gpu import default_concurrency

        return self.concurrency or self.dask_workers or default_concurrency(self.device)

    @property
    def experiment_name(self) -> str:
        return self.experiment or source_name(self.data.source)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """What names the search: the configuration less what cannot change a result (how many
        trials run at once, where the store is, where the prepared data sits, whether steps
        replay as CUDA graphs), so that a resumed search with another --concurrency is the same search."""
        config = self.to_json()
        for name in ("concurrency", "tracking_uri", "cuda_graphs", "cluster", "dask_workers"):
            config.pop(name)
        # Added later: searches that leave them unset keep their identity.
        for name in ("init_from", "controller_lr", "smash_steps", "smash_candidates", "warm_start_predictor",
                     "optimizer"):
            if config[name] in (None, False):
                config.pop(name)
        config["data"].pop("data_dir")
        space = Path(self.space)
        if space.is_file():  # the space's words, not where this clone keeps the file ("auto" resolves to a path)
            config["space"] = digest(space.read_text())
        return config

    @staticmethod
    def from_json(raw: dict[str, Any]) -> SearchConfig:
        data = dict(raw.get("data") or {})
        if data.get("shape") is not None:
            data["shape"] = tuple(data["shape"])
        return SearchConfig(**{**raw, "data": DataConfig(**data)})

    def override(self, **options: Any) -> SearchConfig:
        """Apply command-line options that were given (None means: keep the default)."""
        data_keys = {f.name for f in fields(DataConfig)}
        data = replace(self.data, **{k: v for k, v in options.items() if k in data_keys and v is not None})
        rest = {k: v for k, v in options.items() if k not in data_keys and v is not None}
        return replace(self, data=data, **rest)


REFINE_METHODS = ("grid", "bayes")
# Without epochs, settings train 30 epochs or the search's, if more (nas.refine.refinement_space).
DEFAULT_REFINE_HPARAMS = {"lr": [2.0e-3, 5.0e-3], "weight_decay": [0.0, 1.0e-4], "batch_size": [32]}


@dataclass(frozen=True)
class RefineConfig:
    """Final refinement: which architectures of a search, and which training settings to try."""

    top_k: int = 2  # the search's best architectures (distinct) to refine
    trials: int = 4  # training settings tried per architecture
    method: str = "grid"  # grid | bayes
    hparams: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_REFINE_HPARAMS))
    # The final model averages the winner trained on train+val with this many seeds (1: one network).
    # On MNIST-1D three seeds of one network scored 0.985 test where the seeds alone scored 0.979-0.985.
    ensemble: int = 3
    # Settings of a round that share batch size and epochs train as one vmapped network (nas.batched).
    # Off by default: on 2 cores two settings at once took 19 s where one batched pair took 31 s.
    batched: bool = False

    def __post_init__(self) -> None:
        _require_positive(self, ("top_k", "trials", "ensemble"), section="refine.")
        if self.method not in REFINE_METHODS:
            raise ConfigError(f"refine.method '{self.method}' is unknown; use one of {list(REFINE_METHODS)}.")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict[str, Any]) -> RefineConfig:
        try:
            return RefineConfig(**raw)
        except TypeError:
            raise ConfigError(f"the refine section takes the keys {[f.name for f in fields(RefineConfig)]}, "
                              f"got {sorted(raw)}.") from None


def _read_params(given: str | Path | None) -> dict[str, Any]:
    """The defaults file: the one named (which must exist), else params.yaml where there is one."""
    path = Path(given or PARAMS_FILE)
    if given is not None and not path.is_file():
        raise ConfigError(f"--params {path}: no such file. Name an existing YAML file (the project's params.yaml "
                          "shows its sections), or leave --params out to use ./params.yaml (or the built-in "
                          "defaults where there is none).")
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({yaml_problem(exc)}); fix the syntax and run again.") from None
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{path} must be a mapping with sections `data:`, `search:` and `refine:`.")
    return raw or {}


def load_refine_params(path: str | Path | None = None) -> RefineConfig:
    """The `refine` section of params.yaml (or the file `path`), or the defaults."""
    section = _read_params(path).get("refine") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: the refine section must be a mapping of {[f.name for f in fields(RefineConfig)]}.")
    return RefineConfig.from_json(section)


def load_model_name(path: str | Path | None = None) -> str | None:
    """The Model Registry name of params.yaml's (or `path`'s) `evaluate` section, if it sets one."""
    name = (_read_params(path).get("evaluate") or {}).get("model_name")
    return None if name is None else str(name)


def load_params(path: str | Path | None = None) -> SearchConfig:
    """The search configuration of params.yaml or the file `path` (sections `data` and `search`), or the defaults."""
    raw = _read_params(path)
    path = path or PARAMS_FILE
    try:
        data = dict(raw.get("data") or {})
        if isinstance(data.get("shape"), str):
            data["shape"] = parse_shape(data["shape"])
        return SearchConfig.from_json({**(raw.get("search") or {}), "data": data})
    except (TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is malformed ({exc}); it needs sections `data:` and `search:` whose keys "
                          f"are {[f.name for f in fields(DataConfig)]} and "
                          f"{[f.name for f in fields(SearchConfig) if f.name != 'data']}.") from None
