"""PathNet as a search of the lineage store: `nas search --strategy pathnet`.

PathNet is not an ask/tell strategy: its candidates share one network's weights, which
gradient descent changes between any two proposals, so it runs its own loop
(`nas.pathnet.tournament`) and records it like any search:

- the search run (found again by its configuration less `--trials`, so more rounds
  continue the same tournament) holds the fabric's weights and the tournament's state as
  `STATE_FILE`, written every `CHECKPOINT_EVERY` rounds: a killed search resumes at its
  last checkpoint and replays the rounds after it exactly;
- every round is a trial run: its winner's path as the architecture sentence (the network
  the path computes, `path_architecture`; the module indices in the tag `nas.path`),
  its validation accuracy, both paths' fitness, and as parent the round that wrote the
  winner's path into the population (a replayed round finds its run by key, never a twin);
- `--init-from` (an experiment, meaning its latest PathNet search, or a search run id) is
  transfer: that search's fabric is loaded, its best path frozen, the rest re-initialised
  and a head added for this data (`nas.pathnet.transfer`); the frozen path's round is a
  parent of every run of this search.

The space file's `methods: pathnet:` mapping gives the fabric (`nas.pathnet.FabricSpec`)
and the tournament's settings (TOURNAMENT_SETTINGS); `--trials` counts rounds and
`--population` the paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path as FilePath
from typing import Any

from nas.config import ConfigError, SearchConfig
from nas.data import prepare
from nas.ids import digest
from nas.lineage import LineageError, LineageStore, resolve_tracking_uri
from nas.pathnet import Fabric, FabricSpec, Path, RoundRecord, tournament, transfer
from nas.space import SearchSpace
from nas.space.auto import SPACES
from nas.space.architecture import Architecture, HParams, Node
from nas.train import load_data
from nas.trial import Budget, Candidate, Evaluation

STATE_FILE = "pathnet/state.safetensors"
CHECKPOINT_EVERY = 5  # rounds between checkpoints: a kill replays at most this many
# The tournament's settings beside the fabric's in `methods: pathnet:`, with their defaults.
TOURNAMENT_SETTINGS: dict[str, Any] = {"population": 16, "steps_per_evaluation": 20, "lr": 0.05, "batch_size": 32,
                                       "target_accuracy": None}


def with_space(config: SearchConfig) -> SearchConfig:
    """`config` with its space a file: `auto` means the shipped spaces/pathnet.yaml."""
    return replace(config, space=str(SPACES / "pathnet.yaml")) if config.space == "auto" else config


def pathnet_settings(space: SearchSpace) -> tuple[FabricSpec, dict[str, Any]]:
    """The fabric and the tournament settings of a space file's `methods: pathnet:` mapping."""
    given = space.method_settings("pathnet")
    tournament_settings = {**TOURNAMENT_SETTINGS, **{k: given.pop(k) for k in TOURNAMENT_SETTINGS if k in given}}
    try:
        return FabricSpec.from_settings(given), tournament_settings
    except ValueError as error:
        raise ConfigError(f"{space.source}: {error} (The tournament takes {sorted(TOURNAMENT_SETTINGS)}.)") from None


def path_architecture(spec: FabricSpec, path: Path, input_shape: tuple[int, ...]) -> Architecture:
    """The network a path computes, as a sentence of the language: per layer its modules
    side by side, summed, then pooled as the fabric pools; a head on the flattened output.
    (Which of the M modules a path uses is the tag `nas.path`, not the sentence.)"""
    nodes = [Node.make("input")]
    spatial = tuple(input_shape[1:])
    for active in path.layers:
        source = len(nodes) - 1
        for _ in active:
            if spec.module == "dense":
                nodes.append(Node.make("dense", [source], units=spec.width, activation="relu", dropout=0.0))
            else:
                nodes.append(Node.make("conv", [source], channels=spec.width,
                                       kernel_h=1 if len(spatial) == 1 else spec.kernel, kernel_w=spec.kernel,
                                       stride=1, batch_norm=False, activation="relu"))
        if len(active) > 1:
            nodes.append(Node.make("add", list(range(len(nodes) - len(active), len(nodes)))))
        if spec.module == "conv" and min(spatial) >= 2:
            nodes.append(Node.make("pool", [len(nodes) - 1], kind="max", size=2))
            spatial = tuple(s // 2 for s in spatial)
    if spec.module == "conv":
        nodes.append(Node.make("flatten", [len(nodes) - 1]))
    nodes.append(Node.make("head", [len(nodes) - 1]))
    return Architecture(tuple(nodes))


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """A tournament state (`PathNetResult.state()`, plus our own keys) as safetensors: the
    fabric's weights as tensors, the rest as JSON in the metadata. No pickles."""
    from safetensors.torch import save

    rest = {**state, "tournament": {**state["tournament"], "fabric": {
        k: v for k, v in state["tournament"]["fabric"].items() if k != "weights"}}}
    return save(state["tournament"]["fabric"]["weights"], metadata={"state": json.dumps(rest)})


def state_from_bytes(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    # The safetensors layout: an 8-byte little-endian header length, then the JSON header.
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    state = json.loads(header["__metadata__"]["state"])
    state["tournament"]["fabric"]["weights"] = load(data)
    return state


def source_search(init_from: str, store: LineageStore) -> tuple[str, dict[str, Any]]:
    """The search run `init_from` names (the latest search of the store's experiment, else a
    run id) and its saved state; `store` is the experiment of that name."""
    run_id = store.latest_search() or init_from
    try:
        data = store.read_bytes(run_id, STATE_FILE)
    except LineageError:
        data = None
    if data is None:
        raise ConfigError(f"--init-from {init_from} names no PathNet search with a saved fabric; pass the experiment "
                          "(or search run id) of an earlier `nas search --strategy pathnet`.")
    return run_id, state_from_bytes(data)


def run_pathnet(config: SearchConfig, root: FilePath, tags: dict[str, str] | None = None,
                on_round: Callable[[RoundRecord, Evaluation], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or find finished) the PathNet search `config` describes; its summary."""
    config = with_space(config)
    tracking_uri = resolve_tracking_uri(config.tracking_uri, root)
    data = config.data
    meta = prepare(data.source, data.resolved_dir(root), label_column=data.label_column, shape=data.shape,
                   seed=data.split_seed)
    space = SearchSpace.load(config.space)
    spec, settings = pathnet_settings(space)
    population = config.population or settings["population"]
    task = f"data-{meta.fingerprint[:8]}"
    shape = tuple(meta.shape)
    fabric = Fabric(spec, shape, seed=config.seed)
    store = LineageStore(tracking_uri, config.experiment_name, root)
    identity = config.identity()
    identity.pop("trials")  # more rounds continue the same tournament
    source_run, frozen_parent = None, None
    if config.init_from:
        source_run, source = source_search(config.init_from, LineageStore(tracking_uri, config.init_from, root))
        identity["init_from"] = source_run  # the run, not the name: another source is another search
        try:
            fabric.restore(source["tournament"]["fabric"])
        except RuntimeError as error:
            raise ConfigError(f"--init-from {config.init_from}: its fabric does not fit this data of shape {shape} "
                              f"or this space's fabric ({str(error).splitlines()[0]}); transfer between data sets "
                              "of one shape, with the space file the first search used.") from None
        if task in fabric.tasks:
            raise ConfigError(f"--init-from {config.init_from} learnt this very data set; transfer to another one.")
        frozen_parent = source["best_run_id"]
    store.ensure()
    search_run = store.start_search(config.to_json(), FilePath(config.space), meta.fingerprint,
                                     tags={**(tags or {}), **({"nas.transfer_from": source_run} if source_run else {})},
                                     identity=identity)
    saved = store.read_bytes(search_run, STATE_FILE)
    state = state_from_bytes(saved) if saved else None
    if state is None and source_run:
        transfer(fabric, Path.from_sentence(source["best_path"]), task, len(meta.classes))
    elif state is None:
        fabric.add_task(task, len(meta.classes))  # (a saved state brings its heads along)
    # Which round's run wrote each slot's path: the parent of the next round that path wins.
    origins: list[str | None] = state["origins"] if state else [frozen_parent] * population
    best: dict[str, Any] = {"run_id": state["best_run_id"], "val_acc": state["tournament"]["best_val_acc"]} \
        if state else {"run_id": None, "val_acc": -1.0}
    splits = load_data(data.resolved_dir(root), "cpu")
    key = digest({"pathnet": identity, "data": meta.fingerprint})
    hparams = HParams(optimizer="sgd", lr=settings["lr"], batch_size=settings["batch_size"], epochs=1)
    started = time.perf_counter()

    def record(r: RoundRecord) -> None:
        winner_slot = r.slots[r.winner]
        parents = tuple(dict.fromkeys(p for p in (origins[winner_slot], frozen_parent) if p))
        candidate = Candidate(path_architecture(spec, r.parent, shape), hparams, Budget(1), parents=parents,
                              generation=r.round, info={
                                  "path": r.parent.to_sentence(), "round": r.round, "fitness": list(r.fitness),
                                  "loser": r.paths[1 - r.winner].to_sentence(), "child": r.child.to_sentence(),
                                  "steps": r.steps})
        trial_key = digest({"round": r.round, "search": key})
        claim = store.claim_trial(candidate, trial_key, parent_run_id=search_run, strategy="pathnet",
                                  data_fingerprint=meta.fingerprint, tags=tags)
        evaluation = claim.result
        if evaluation is None:
            evaluation = Evaluation(candidate, trial_key, val_acc=r.winner_val_acc, val_accs=[r.winner_val_acc],
                                    train_loss=[1.0 - r.fitness[r.winner]], epochs_trained=1,
                                    params=_path_params(fabric, r.parent, task),
                                    seconds=time.perf_counter() - started, run_id=claim.run_id)
            store.finish_trial(claim.run_id, evaluation, None, None, set())
        origins[r.loser_slot] = evaluation.run_id
        if r.winner_val_acc > best["val_acc"]:  # as the tournament picks its best path: the first of equals
            best.update(run_id=evaluation.run_id, val_acc=r.winner_val_acc)
        if on_round is not None:
            on_round(r, evaluation)

    def checkpoint(snapshot: dict[str, Any]) -> None:
        store.log_bytes(search_run, STATE_FILE, state_to_bytes({
            "tournament": snapshot, "origins": origins, "best_run_id": best["run_id"],
            "best_path": Path.from_json(snapshot["best_path"]).to_sentence()}))

    result = tournament(fabric, splits, task=task, population=population,
                        steps_per_evaluation=settings["steps_per_evaluation"], generations=config.trials,
                        lr=settings["lr"], batch_size=settings["batch_size"], seed=config.seed,
                        target_accuracy=settings["target_accuracy"], on_round=record, on_checkpoint=checkpoint,
                        checkpoint_every=CHECKPOINT_EVERY, state=state["tournament"] if state else None)
    stop = (f"reached the target accuracy {settings['target_accuracy']} after {result.rounds} rounds"
            if result.reached else f"the trial budget of {config.trials} rounds is spent")
    summary: dict[str, Any] = {
        "experiment": config.experiment_name, "parent_run_id": search_run, "tracking_uri": tracking_uri,
        "trials": result.rounds, "failed": 0, "stop_reason": stop, "best_path": result.best_path.to_sentence(),
        "steps": result.steps, "frozen_modules": len(fabric.frozen)}
    if result.steps_to_target is not None:
        summary["steps_to_target"] = result.steps_to_target
    if source_run:
        summary["transfer_from"] = source_run
    if best["run_id"]:
        (winner,) = store.evaluations([best["run_id"]])
        summary.update(best_run_id=winner.run_id, best_arch_id=winner.arch_id, best_val_acc=winner.val_acc,
                       best_params=winner.params)
    store.finish_search(search_run, {k: v for k, v in summary.items()
                                     if k not in ("experiment", "parent_run_id", "tracking_uri")})
    return summary


def _path_params(fabric: Fabric, path: Path, task: str) -> int:
    """Parameters of the network a path computes: its modules (frozen ones too) and the task's head."""
    modules = [fabric.layers[layer][m] for layer, m in path.modules()]
    return sum(p.numel() for module in (*modules, fabric.head(task)) for p in module.parameters())
