"""Every check of a search's inputs, run before any flow starts.

Data, space, options and store are read and checked in the caller's process, so that a
user error arrives as one paragraph (DataError, SpaceError, ConfigError, LineageError)
rather than under an orchestrator's tracebacks, and leaves no run behind. What passes is
what the flow then uses: the prepared folder (which `prepare` then finds current) and the
space file that `auto` chose.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, replace
from pathlib import Path

from nas.api import bound_space
from nas.config import ConfigError, SearchConfig
from nas.data import feature_columns, prepare
from nas.lineage import LineageStore
from nas.runner import CV_FOLDS, SMALL_DATA_EPOCHS, small_data, with_epochs
from nas.space import resolve_space
from nas.space.architecture import learned_run
from nas.strategies import strategy_class
from nas.strategies.hyperband import SCHEDULERS
from nas.transfer import transfer_source


@dataclass(frozen=True)
class Checked:
    """A configuration that passed, its space resolved to a file, and the line that tells the user which."""

    config: SearchConfig
    note: str


def check_search(config: SearchConfig, root: Path | None = None) -> Checked:
    """Check options, data, space and store in this order (cheapest first); raise the first problem."""
    root = root or Path.cwd()
    _check_options(config)
    config = _check_cluster(config)
    data = config.data
    meta = prepare(data.source, data.resolved_dir(root), label_column=data.label_column, shape=data.shape,
                   seed=data.split_seed)
    path, note = resolve_space(config.space, meta.shape, feature_columns(data.source, data.label_column))
    if small_data(meta) and config.cv != 1:
        note += (f"\n{meta.counts['train'] + meta.counts['val']} rows to learn from: each trial is scored by "
                 f"{config.cv or CV_FOLDS}-fold cross-validation"
                 + ("" if config.epochs else f" and trains {SMALL_DATA_EPOCHS} epochs"))
    config = with_epochs(replace(config, space=path), meta)
    if config.scheduler and config.min_epochs > config.epochs:
        raise ConfigError(f"--min-epochs {config.min_epochs} exceeds --epochs {config.epochs}: the scheduler's "
                          "first rung must be no longer than its last.")
    space = bound_space(config, meta)
    # A space in which no network fits this data (or --max-params) says so now, not after a search of failures.
    limit = min(space.max_params, config.max_params or space.max_params)
    replace(space, max_params=limit).sample_arch(random.Random(config.seed))
    LineageStore(config.tracking_uri, config.experiment_name, root).ensure()
    if config.from_experiment and not LineageStore(config.tracking_uri, config.from_experiment, root).leaderboard(1):
        raise ConfigError(f"--from-experiment '{config.from_experiment}' has no finished runs in this store; "
                          "check the name with `nas runs --experiment NAME` or `nas ui`.")
    if config.init_from:
        transfer_source(config.init_from, config.tracking_uri, root)  # a typo is named before any flow starts
    if (run_id := learned_run(config.optimizer or "")) is not None:
        LineageStore(config.tracking_uri, config.experiment_name, root).learned_optimizer(run_id)
    return Checked(config, note)


def check_pathnet(config: SearchConfig, root: Path | None = None) -> Checked:
    """`check_search` for PathNet, which runs its own tournament (nas.pathnet_search)."""
    from nas.pathnet import Fabric
    from nas.pathnet_search import pathnet_settings, source_search, with_space
    from nas.space import SearchSpace

    root = root or Path.cwd()
    if config.cluster or config.dask_workers:
        raise ConfigError("PathNet's paths share one fabric of weights in this process, so they cannot train on "
                          "Dask workers; leave --cluster and --workers out.")
    if config.scheduler:
        raise ConfigError("PathNet's tournament trains paths for a fixed number of steps each, so it has no rungs "
                          "to schedule; leave --scheduler out.")
    data = config.data
    meta = prepare(data.source, data.resolved_dir(root), label_column=data.label_column, shape=data.shape,
                   seed=data.split_seed)
    config = with_epochs(with_space(config), meta)
    spec, _ = pathnet_settings(SearchSpace.load(config.space))
    try:
        Fabric(spec, meta.shape)
    except ValueError as error:
        raise ConfigError(f"{config.space}: {error}") from None
    LineageStore(config.tracking_uri, config.experiment_name, root).ensure()
    if config.init_from:
        source_search(config.init_from, LineageStore(config.tracking_uri, config.init_from, root))
    return Checked(config, f"PathNet: a fabric of {spec.layers} layers x {spec.modules} {spec.module} modules "
                           f"from {config.space}, {config.trials} tournament rounds")


def _check_cluster(config: SearchConfig) -> SearchConfig:
    """A Dask scheduler at --cluster answers and has workers; --concurrency defaults to the trials
    they train at once: their threads, or their GPUs where they declare some (see trial_slots)."""
    if not config.cluster:
        return config
    from distributed import Client

    from nas.cluster import trial_slots

    try:
        with Client(config.cluster, timeout=5, set_as_default=False) as client:
            slots = trial_slots(client)
    except (OSError, TimeoutError) as error:
        raise ConfigError(f"no Dask scheduler answers at --cluster {config.cluster} ({error}); start one with "
                          f"`dask scheduler` and workers with `dask worker {config.cluster}`, or use --workers N "
                          "for a local cluster.") from None
    if not slots:
        raise ConfigError(f"the Dask cluster at {config.cluster} has no workers; start some with "
                          f"`dask worker {config.cluster}`.")
    return config if config.concurrency else replace(config, concurrency=slots)


def _check_options(config: SearchConfig) -> None:
    """What the configuration's own checks cannot know: the strategies, the schedulers, the machine."""
    try:
        cls = strategy_class(config.strategy)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.scheduler and config.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler '{config.scheduler}'; choose one of {list(SCHEDULERS)} with "
                          "--scheduler, or leave it out to train every candidate for --epochs.")
    if config.population and "population_size" not in inspect.signature(cls).parameters:
        raise ConfigError(f"--population applies to population-based strategies; '{config.strategy}' has none.")
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda, but this machine has no usable CUDA GPU (torch.cuda.is_available() "
                              "is False); leave --device out to train on what there is, or pass --device cpu.")
