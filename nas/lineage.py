"""The lineage store: every candidate of every search method is one MLflow run.

This is the only module of the package that knows MLflow. A search is a parent run; each
candidate is a child run carrying its architecture (`architecture.json`), per-epoch
metrics, its `Evaluation` (`evaluation.json`), its weights (`weights.safetensors`) and the
`nas.*` tags that let any method read what any other found.

The store is shared by many training threads, and MLflow's fluent API keeps its active
run per thread, so everything here goes through one `MlflowClient` with explicit run ids.
torch and safetensors are imported only where weights or models are handled, so listing
runs stays fast.

    store = LineageStore(root=project_dir)
    store.ensure()                                  # once, before fanning out
    search = store.start_search(config, space_file, data_fp)
    claim = store.claim_trial(candidate, key, parent_run_id=search, strategy="random",
                              data_fingerprint=data_fp)   # or claim.result: found, nothing to train
    store.finish_trial(claim.run_id, evaluation, weights=model.state_dict())
    store.finish_search(search, {"best_val_acc": 0.97})
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nas.ids import digest
from nas.trial import Candidate, Evaluation, TrialStatus

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_STORE_DIR = "mlflow"  # relative to the project root (current working directory)
DATABASE_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"

# MLflow's limits per log_batch call; longer values are truncated rather than rejected.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_CONFIG_PARAM_CHARS = 500
MAX_TAG_CHARS = 5000

EVALUATION_FILE = "evaluation.json"
ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"  # weights, optimizer and RNG states of a run that can be continued
CONFIG_FILE = "config.json"
MODEL_NAME = "model"

KIND_SEARCH = "search"
KIND_TRIAL = "trial"
KIND_FINAL = "final"  # a refined winner trained on train+val: its val metrics are in-sample

LOCK_FILE = "store.lock"
HEARTBEAT_SECONDS = 10.0  # how often a training run says it is alive ...
CLAIM_LEASE_SECONDS = 60.0  # ... and how long without a word before another process takes it over

FIX_HINT = ("start the tracking server, check MLFLOW_TRACKING_URI, or pass --tracking-uri "
            "(the default needs no server: a SQLite file under ./mlflow/)")


class LineageError(RuntimeError):
    """The lineage store cannot be reached or does not hold what was asked for."""


def resolve_tracking_uri(uri: str | None = None, root: Path | None = None) -> str:
    """uri if given, else $MLFLOW_TRACKING_URI, else sqlite:///<abs root>/mlflow/mlflow.db.

    A relative SQLite path is made absolute against root (default: the current directory),
    because DVC stages and temporary clones run in other directories and would otherwise
    each grow their own empty database.
    """
    root = (root or Path.cwd()).absolute()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return _absolute_sqlite(uri, root)
    store_dir = root / DEFAULT_STORE_DIR
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LineageError(f"cannot create the MLflow store folder {store_dir}: {error}. Make the "
                           "project folder writable, or " + FIX_HINT + ".") from error
    return f"sqlite:///{store_dir / DATABASE_FILE}"


def _absolute_sqlite(uri: str, root: Path) -> str:
    if not uri.startswith("sqlite:///"):
        return uri
    path, query = _split_query(uri.removeprefix("sqlite:///"))
    if not path or path == ":memory:" or Path(unquote(path)).is_absolute():
        return uri
    return f"sqlite:///{root / unquote(path)}{query}"


def _split_query(path: str) -> tuple[str, str]:
    path, sep, query = path.partition("?")
    return path, sep + query


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path, _ = _split_query(uri.removeprefix("sqlite:///"))
    return Path(unquote(path)) if path and path != ":memory:" else None


class LineageStore:
    """One MLflow experiment holding search runs and, nested under them, candidate runs.

    Safe to use from many threads, as one shared instance or one instance per task: it
    keeps no per-thread state, and a lock per tracking URI (see _store_lock) makes the
    first-time set-up and the database writes one thread at a time.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "default",
                 root: Path | None = None) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri, root)
        self.experiment = experiment
        database = _sqlite_file(self.tracking_uri)
        # A local SQLite store keeps artifacts beside the database, not in ./mlruns of
        # whichever directory the process happens to start in.
        self.artifact_dir: Path | None = database.parent / ARTIFACTS_DIR if database else None
        self._lock = _store_lock(self.tracking_uri)
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    # -- set-up ------------------------------------------------------------------------

    def ensure(self) -> str:
        """Create the database and the experiment if missing; returns the experiment id.

        Idempotent and thread-safe; call it once before fanning out so that no two threads
        run the first-time migrations or create the experiment at the same time.
        """
        if self._experiment_id is not None:  # every call passes here: no lock once set up
            return self._experiment_id
        with self._exclusive():
            if self._experiment_id is None:
                try:
                    client = MlflowClient(tracking_uri=self.tracking_uri)
                    experiment_id = self._get_or_create_experiment(client)
                except LineageError:
                    raise
                except Exception as error:  # any failure of first contact leaves the store unusable
                    raise LineageError(
                        f"cannot use the MLflow tracking store at {self.tracking_uri}: "
                        f"{type(error).__name__}: {_short(str(error), 500)}. Fix: {FIX_HINT}."
                    ) from error
                self._client, self._experiment_id = client, experiment_id
            return self._experiment_id

    def _get_or_create_experiment(self, client: MlflowClient) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            location = self.artifact_dir.as_uri() if self.artifact_dir else None
            try:
                return client.create_experiment(self.experiment, artifact_location=location)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(self.experiment)  # another process won
                assert found is not None
        if found.lifecycle_stage != "active":
            raise LineageError(
                f"the MLflow experiment '{self.experiment}' at {self.tracking_uri} is deleted. "
                f"Restore it (mlflow experiments restore --experiment-id {found.experiment_id}) "
                "or choose another experiment name.")
        return found.experiment_id

    def _find_experiment(self) -> str | None:
        """The experiment's id if it exists. Reading never creates a store or an experiment:
        a SQLite store costs seconds of migrations, and a mistyped name would stay behind."""
        if self._experiment_id is None:
            database = _sqlite_file(self.tracking_uri)
            if database is not None and not database.exists():
                return None
            client = MlflowClient(tracking_uri=self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is None or found.lifecycle_stage != "active":
                return None
            self._client, self._experiment_id = client, found.experiment_id  # client first: see `client`
        return self._experiment_id

    def _reader(self) -> MlflowClient:
        """A client for reads by run id, which need no experiment of this store's (run ids are global)."""
        return self._client or MlflowClient(tracking_uri=self.tracking_uri)

    @property
    def experiment_id(self) -> str:
        return self._experiment_id or self.ensure()

    @property
    def client(self) -> MlflowClient:
        self.ensure()
        assert self._client is not None
        return self._client

    # -- searches ----------------------------------------------------------------------

    def start_search(self, config: dict[str, Any], space_file: Path | None,
                     data_fingerprint: str, tags: dict[str, str] | None = None,
                     identity: dict[str, Any] | None = None) -> str:
        """The parent run of one search; a repeated search (same identity, default the whole
        config, and same data) reuses it."""
        key = digest({"config": identity if identity is not None else config, "data": data_fingerprint})
        found = self._search(f"tags.`nas.search_key` = '{key}' and tags.`nas.kind` = '{KIND_SEARCH}'",
                             max_results=1)
        search_tags = {
            "nas.search_key": key,
            "nas.kind": KIND_SEARCH,
            "nas.strategy": str(config.get("strategy", "")),
            "nas.data_fp": data_fingerprint,
            **(tags or {}),
        }
        params = _flatten(config)
        with self._writing() as client:
            if found:
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
            else:
                name = f"search-{config.get('strategy', 'nas')}-{key[:8]}"
                run_id = client.create_run(self.experiment_id, run_name=name).info.run_id
            # Re-logging equal params is a no-op, so a resumed search that crashed mid-way
            # still ends up with all of them.
            for chunk in _chunks(sorted(params.items()), MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=[Param(k, v) for k, v in chunk])
        self._set_tags(run_id, search_tags)
        self.client.log_dict(run_id, config, CONFIG_FILE)
        if space_file is not None:
            if not Path(space_file).is_file():
                raise LineageError(f"search-space file {space_file} does not exist; pass the "
                                   "path of an existing YAML space file (e.g. spaces/cnn.yaml).")
            self.client.log_artifact(run_id, str(space_file))
        return run_id

    def finish_search(self, run_id: str, summary: dict[str, float | str],
                      status: str = "FINISHED") -> None:
        """Numbers become metrics, strings become tags nas.best.<key>; then the run ends."""
        self.log_result(run_id, {k: v for k, v in summary.items() if not isinstance(v, str)},
                        {f"nas.best.{k}": v for k, v in summary.items() if isinstance(v, str)})
        self._terminate(run_id, status)

    # -- trials ------------------------------------------------------------------------

    def find(self, trial_key: str) -> Evaluation | None:
        """The Evaluation of a finished run of this candidate, else None."""
        found = self._search(f"tags.`nas.trial_key` = '{trial_key}' and attributes.status = 'FINISHED'",
                             max_results=1)
        return self._evaluation(found[0]) if found else None

    def claim_trial(self, candidate: Candidate, trial_key: str, *, parent_run_id: str | None,
                    strategy: str, data_fingerprint: str, tags: dict[str, str] | None = None,
                    kind: str = KIND_TRIAL, poll_seconds: float = 0.5) -> Claim:
        """The finished result of `trial_key`, or a new run of it that the caller now owns and must train.

        Two threads or two processes asking for one key never both train it: checking for
        a result or a live claim and creating the run happen under one lock (a file lock
        beside a local database), and whoever finds a live claim waits for its result. A
        claim whose owner died (its process is gone, or its heartbeat is older than
        CLAIM_LEASE_SECONDS) is abandoned, explained in its tags, deleted with its
        artifacts, and taken over.
        """
        while True:
            with self._exclusive():
                found = self.find(trial_key)
                if found is not None:
                    return Claim(result=found)
                if not self._live_claims(trial_key):
                    return Claim(run_id=self._start_trial(candidate, trial_key, parent_run_id=parent_run_id,
                                                          strategy=strategy, data_fingerprint=data_fingerprint,
                                                          tags=tags, kind=kind))
            time.sleep(poll_seconds)

    def _live_claims(self, trial_key: str) -> list[Run]:
        """Running runs of the key whose owner lives; dead owners' runs are abandoned on the way."""
        live = []
        for run in self._search(f"tags.`nas.trial_key` = '{trial_key}' and attributes.status = 'RUNNING'"):
            why_dead = _dead_owner(run.data.tags)
            if why_dead is None:
                live.append(run)
            else:
                self._abandon(run, why_dead)
        return live

    def _abandon(self, run: Run, reason: str) -> None:
        run_id = run.info.run_id
        self._set_tags(run_id, {"nas.status": TrialStatus.ABANDONED.value, "nas.reason": reason})
        self._terminate(run_id, "KILLED")
        with self._writing() as client:
            client.delete_run(run_id)
        local = _local_dir(run.info.artifact_uri)
        if local is not None:  # the partial attempt's files go with it; `mlflow gc` purges the row later
            shutil.rmtree(local.parent if local.name == "artifacts" else local, ignore_errors=True)

    @contextmanager
    def heartbeat(self, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """Keep run_id's claim alive while the block runs (training), from a daemon thread."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every):
                try:
                    self._set_tags(run_id, {"nas.heartbeat": f"{time.time():.0f}"})
                except Exception as error:  # a missed beat only shortens the lease
                    logging.getLogger(__name__).warning("heartbeat of run %s failed: %s", run_id, error)

        thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One thread and one process at a time on this store: the store lock, and for SQLite a file lock
        beside the database (first-time migrations and claims must not interleave across processes).
        Re-entrant: a claim that sets up the experiment on its way takes the file lock once."""
        with self._lock:
            if self.artifact_dir is None or self._lock.file_held:  # a server's own transactions are all there is
                yield
                return
            lock = self.artifact_dir.parent / LOCK_FILE
            try:
                lock.parent.mkdir(parents=True, exist_ok=True)
                handle = open(lock, "a")
            except OSError as error:
                raise LineageError(f"cannot write the MLflow store folder {lock.parent}: {error}. Make it writable, "
                                   "or " + FIX_HINT + ".") from error
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._lock.file_held = True
                try:
                    yield
                finally:
                    self._lock.file_held = False
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _start_trial(self, candidate: Candidate, trial_key: str, *, parent_run_id: str | None,
                     strategy: str, data_fingerprint: str, tags: dict[str, str] | None = None,
                     kind: str = KIND_TRIAL) -> str:
        arch_id = candidate.arch.arch_id
        # Strategy notes first, so that they can never overwrite the tags below.
        run_tags = {f"nas.{k}": _text(v) for k, v in candidate.info.items()}
        run_tags.update({
            "nas.arch_id": arch_id,
            "nas.trial_key": trial_key,
            "nas.strategy": strategy,
            "nas.parents": json.dumps(list(candidate.parents)),
            "nas.generation": str(candidate.generation),
            "nas.budget": str(candidate.budget.epochs),
            "nas.data_fp": data_fingerprint,
            "nas.status": TrialStatus.RUNNING.value,
            "nas.kind": kind,
            "nas.owner": f"{socket.gethostname()}:{os.getpid()}",
            "nas.heartbeat": f"{time.time():.0f}",
        })
        if candidate.inherit_from:
            run_tags["nas.inherit_from"] = candidate.inherit_from
        if candidate.resume_from:
            run_tags["nas.resume_from"] = candidate.resume_from
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run_tags.update(tags or {})
        params = {k: str(v) for k, v in candidate.hparams.to_json().items()}
        params.update(arch_id=arch_id, budget=str(candidate.budget.epochs),
                      n_nodes=str(len(candidate.arch.nodes)))
        with self._writing() as client:
            run_id = client.create_run(
                self.experiment_id, run_name=f"{strategy}-{arch_id[:8]}",
                tags={k: _short(str(v), MAX_TAG_CHARS) for k, v in run_tags.items()}).info.run_id
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_dict(run_id, {"arch": candidate.arch.to_json(),
                                      "hparams": candidate.hparams.to_json()}, ARCHITECTURE_FILE)
        return run_id

    def finish_trial(self, run_id: str, evaluation: Evaluation, weights: dict[str, torch.Tensor] | None = None,
                     checkpoint: dict[str, Any] | None = None) -> None:
        """Record the outcome; a failed candidate is still a FINISHED run: it was evaluated."""
        now = _now_ms()
        metrics = [Metric("train_loss", float(v), now, i) for i, v in enumerate(evaluation.train_loss)]
        metrics += [Metric("val_acc", float(v), now, i) for i, v in enumerate(evaluation.val_accs)]
        finals = {"val_acc": evaluation.val_acc, "test_acc": evaluation.test_acc,
                  "params": evaluation.params, "flops": evaluation.flops,
                  "seconds": evaluation.seconds, "epochs_trained": evaluation.epochs_trained}
        # The final val_acc shares the last epoch's step but is logged later, so that MLflow's
        # "latest value" (what the leaderboard sorts on) is the final one, not the curve's end.
        last_step = max(len(evaluation.val_accs) - 1, 0)
        metrics += [Metric(k, float(v), now + 1, last_step) for k, v in finals.items() if v is not None]
        self._log_metrics(run_id, metrics)
        outcome = {"nas.status": evaluation.status.value, "nas.device": evaluation.device}
        if evaluation.reason:
            outcome["nas.reason"] = evaluation.reason
        if evaluation.inherited:  # the full list is in evaluation.json
            outcome["nas.inherited_tensors"] = str(len(evaluation.inherited))
        if evaluation.resumed_at:
            outcome["nas.resumed_at"] = str(evaluation.resumed_at)
        self._set_tags(run_id, outcome)
        record = evaluation.to_json()
        record["run_id"] = run_id
        self.client.log_dict(run_id, record, EVALUATION_FILE)
        if weights is not None:
            self._log_weights(run_id, weights)
        if checkpoint is not None:
            self._log_checkpoint(run_id, checkpoint)
        # Last: find() trusts a FINISHED run to hold everything above. A failure of the
        # environment ends FAILED instead, so that no later search takes it for a result.
        self._terminate(run_id, "FAILED" if evaluation.retryable else "FINISHED")

    def fail_trial(self, run_id: str, reason: str) -> None:
        """An infrastructure error, not a result: the run ends FAILED and a rerun trains the trial again."""
        self._set_tags(run_id, {"nas.status": TrialStatus.ERROR.value, "nas.reason": reason})
        self._terminate(run_id, "FAILED")

    def _log_weights(self, run_id: str, weights: dict[str, torch.Tensor]) -> None:
        import torch
        from safetensors.torch import save_file

        not_tensors = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        if not_tensors:
            raise LineageError(f"weights of run {run_id}: entries {not_tensors[:5]} are not tensors; "
                               "pass a state dict of tensors (model.state_dict()).")
        # Copies on the CPU: safetensors refuses tensors that share storage (tied weights)
        # and tensors on other devices.
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
        with tempfile.TemporaryDirectory(prefix="nas-weights-") as folder:
            path = Path(folder) / WEIGHTS_FILE
            save_file(tensors, str(path))
            self.client.log_artifact(run_id, str(path))

    def _log_checkpoint(self, run_id: str, checkpoint: dict[str, Any]) -> None:
        import torch

        with tempfile.TemporaryDirectory(prefix="nas-checkpoint-") as folder:
            path = Path(folder) / CHECKPOINT_FILE
            torch.save(checkpoint, path)
            self.client.log_artifact(run_id, str(path))

    # -- reading -----------------------------------------------------------------------

    def history(self) -> list[Evaluation]:
        """Every evaluated candidate of the experiment (failures included), oldest first."""
        runs = self._search(f"tags.`nas.kind` = '{KIND_TRIAL}' and attributes.status = 'FINISHED'",
                            order_by=["attributes.start_time ASC"])
        return [self._evaluation(run) for run in runs]

    def trials_of(self, search_run_id: str) -> list[Evaluation]:
        """The evaluated candidates of one search (or the children of any run), oldest first."""
        self._get_run(search_run_id)  # a clear error for a wrong id, not an empty list
        runs = self._search(f"tags.`nas.kind` = '{KIND_TRIAL}' and attributes.status = 'FINISHED' and "
                            f"tags.`mlflow.parentRunId` = '{search_run_id}'", order_by=["attributes.start_time ASC"])
        return [self._evaluation(run) for run in runs]

    def search_config(self, search_run_id: str) -> dict[str, Any]:
        """The configuration a search ran with (what `start_search` recorded)."""
        return json.loads(self._require(self._get_run(search_run_id), CONFIG_FILE, (
            ", so it is not a search; pass the run id of a search (`nas runs` lists trials; their parent is "
            "the search).")))

    def latest_search(self) -> str | None:
        """The run id of the experiment's most recent search, if any."""
        runs = self._search(f"tags.`nas.kind` = '{KIND_SEARCH}'", order_by=["attributes.start_time DESC"],
                            max_results=1)
        return runs[0].info.run_id if runs else None

    def log_file(self, run_id: str, path: Path) -> None:
        with self._writing() as client:
            client.log_artifact(run_id, str(path))

    def parents(self, run_id: str) -> list[str]:
        return list(json.loads(self._get_run(run_id).data.tags.get("nas.parents", "[]")))

    def weights(self, run_id: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        return load(self._require(self._get_run(run_id), WEIGHTS_FILE, (
            ": it failed or was logged without weights. Pick a finished ok run from `nas runs`.")))

    def checkpoint(self, run_id: str) -> dict[str, Any]:
        """The state a shorter run left to be continued (see nas.train.TrainOutcome.checkpoint)."""
        import io

        import torch

        data = self._require(self._get_run(run_id), CHECKPOINT_FILE, (
            ": only a run stopped before the end of its learning-rate schedule keeps one. Promote a lower rung "
            "of the same search."))
        # weights_only: tensors and plain containers, never arbitrary pickled code.
        return torch.load(io.BytesIO(data), weights_only=True)

    def best(self, k: int) -> list[Evaluation]:
        """The k best successful trials of the experiment, whatever strategy produced them."""
        return [self._evaluation(run) for run in self._best_runs(k)]

    def _best_runs(self, k: int) -> list[Run]:
        return self._search(f"tags.`nas.kind` = '{KIND_TRIAL}' and tags.`nas.status` = '{TrialStatus.OK.value}' "
                            "and attributes.status = 'FINISHED'",
                            order_by=["metrics.val_acc DESC", "attributes.start_time ASC"],  # ties: the earlier run
                            max_results=k)

    def leaderboard(self, limit: int = 20) -> list[dict[str, Any]]:
        """Best finished candidates by validation accuracy, from one query (no artifact reads).

        A store or experiment that does not exist yet is an empty leaderboard.
        """
        rows = []
        for run in self._best_runs(limit):
            tags, metrics = run.data.tags, run.data.metrics
            rows.append({
                "run_id": run.info.run_id,
                "arch_id": tags.get("nas.arch_id"),
                "strategy": tags.get("nas.strategy"),
                "val_acc": metrics.get("val_acc"),
                "test_acc": metrics.get("test_acc"),
                "params": int(metrics["params"]) if "params" in metrics else None,
                "seconds": metrics.get("seconds"),
                "status": tags.get("nas.status"),
            })
        return rows

    def run_summary(self, run_id: str) -> dict[str, Any]:
        """Everything `nas show` prints about one run."""
        run = self._get_run(run_id)
        artifacts = list(self._artifact_paths(run_id))
        architecture = self._read(run, ARCHITECTURE_FILE) if ARCHITECTURE_FILE in artifacts else None
        return {
            "run_id": run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "tags": {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("nas.")},
            "params": dict(sorted(run.data.params.items())),
            "metrics": dict(sorted(run.data.metrics.items())),
            "artifacts": artifacts,
            "architecture": json.loads(architecture) if architecture else None,
        }

    # -- models and the UI -------------------------------------------------------------

    def model_source(self, run_id: str) -> str | None:
        """The trial whose network `log_model` stored in this run, if any (tag nas.model_of)."""
        return self._get_run(run_id).data.tags.get("nas.model_of")

    def log_model(self, run_id: str, model: torch.nn.Module, input_example: np.ndarray,
                  source_run_id: str | None = None) -> str:
        """Log a servable copy of model into run_id; returns its models:/ URI.

        Pickle format, not MLflow's default pt2: torch.export fails on data-dependent control
        flow, bakes in train/eval mode and fixes size-1 batch dimensions, while pickle stores
        any module as it is. Its classes must be importable where it is loaded, so when the
        model uses this package's classes the package travels with it (code_paths).
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        self._get_run(run_id)
        with torch.no_grad():
            logits = model(torch.as_tensor(input_example)).float().numpy()
        signature = infer_signature(input_example, logits)  # inputs: the example's shape; outputs: class logits
        package = Path(__file__).resolve().parent
        uses_package = any(type(m).__module__.split(".")[0] == package.name for m in model.modules())
        # Under the write lock: log_model writes to the database too, through its own client.
        # Its warning about pickle restates the trade-off chosen above, on every search.
        with self._writing() as client, _global_tracking_uri(self.tracking_uri), \
                _quiet_logger("mlflow.pytorch"):
            # Created here so that the model lands in this experiment: log_model would
            # otherwise file it under whatever experiment the process-global state names.
            logged = client.create_logged_model(self.experiment_id, name=MODEL_NAME, source_run_id=run_id)
            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_NAME,
                model_id=logged.model_id,
                run_id=run_id,
                input_example=input_example,
                signature=signature,
                # Explicit, because inferring them costs seconds; the local "+cpu" tag of a
                # wheel is not installable from PyPI.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pickle",
                code_paths=[str(package)] if uses_package else None,
            )
        tags = {"nas.model_uri": info.model_uri}
        if source_run_id is not None:
            tags["nas.model_of"] = source_run_id
        self._set_tags(run_id, tags)
        return info.model_uri

    def load_model(self, model_uri: str) -> torch.nn.Module:
        import mlflow.pytorch

        with _global_tracking_uri(self.tracking_uri), _quiet_logger("mlflow.pytorch"):
            return mlflow.pytorch.load_model(model_uri, map_location="cpu")

    def log_result(self, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """Add final numbers and notes to a finished run (e.g. the one test measurement)."""
        now = _now_ms()
        self._log_metrics(run_id, [Metric(k, float(v), now, 0) for k, v in metrics.items()])
        self._set_tags(run_id, tags)

    def register(self, model_uri: str, name: str, source_run_id: str, tags: dict[str, str]) -> str:
        """Put a logged model in the Model Registry under `name`; its version number.

        Registering the same run's model again returns the existing version, so a repeated
        pipeline does not pile up identical versions.
        """
        with self._writing() as client:
            for version in client.search_model_versions(f"name = '{name}'"):
                if version.tags.get("nas.source_run") == source_run_id:
                    return str(version.version)
        version_tags = {**tags, "nas.source_run": source_run_id}
        with self._writing(), _global_tracking_uri(self.tracking_uri), _quiet_logger("mlflow"):
            registered = mlflow.register_model(model_uri, name, tags=version_tags)
        return str(registered.version)

    def ui_command(self) -> list[str]:
        command = ["mlflow", "ui", "--backend-store-uri", self.tracking_uri,
                   "--host", "127.0.0.1", "--port", "5000"]
        if self.artifact_dir is not None:
            command += ["--default-artifact-root", self.artifact_dir.as_uri()]
        return command

    # -- helpers -----------------------------------------------------------------------

    def _search(self, filter_string: str, order_by: list[str] | None = None,
                max_results: int | None = None) -> list[Run]:
        """Runs of this experiment matching filter_string, following pages past MLflow's 1000.

        Empty where the experiment does not exist yet: searching never creates it.
        """
        experiment_id = self._find_experiment()
        if experiment_id is None:
            return []
        runs: list[Run] = []
        token = None
        while True:
            page_size = min(1000, max_results - len(runs)) if max_results else 1000
            page = self.client.search_runs([experiment_id], filter_string=filter_string,
                                           order_by=order_by, max_results=page_size, page_token=token)
            runs.extend(page)
            token = page.token
            if not token or (max_results and len(runs) >= max_results):
                return runs

    def _get_run(self, run_id: str) -> Run:
        try:
            return self._reader().get_run(run_id)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise LineageError(f"no run '{run_id}' in the MLflow store at {self.tracking_uri}; "
                                   "list the runs with `nas runs` and copy a run id from there.") from error
            raise

    def _evaluation(self, run: Run) -> Evaluation:
        return Evaluation.from_json(json.loads(self._require(
            run, EVALUATION_FILE, ", so this finished trial was not written by this tool: delete it in `nas ui`.")))

    def _require(self, run: Run, artifact: str, why_and_fix: str) -> bytes:
        data = self._read(run, artifact)
        if data is None:
            raise LineageError(f"run {run.info.run_id} has no {artifact}{why_and_fix}")
        return data

    def _read(self, run: Run, artifact: str) -> bytes | None:
        """One artifact's bytes, or None if the run has no such file."""
        local = _local_dir(run.info.artifact_uri)
        if local is not None:  # read in place: a download costs ~10 ms, and history() reads hundreds
            path = local / artifact
            return path.read_bytes() if path.is_file() else None
        if artifact not in {f.path for f in self._reader().list_artifacts(run.info.run_id)}:
            return None
        with tempfile.TemporaryDirectory(prefix="nas-lineage-") as folder:
            return Path(self._reader().download_artifacts(run.info.run_id, artifact, dst_path=folder)).read_bytes()

    def _artifact_paths(self, run_id: str, path: str | None = None) -> Iterator[str]:
        for info in self._reader().list_artifacts(run_id, path):
            if info.is_dir:
                yield from self._artifact_paths(run_id, info.path)
            else:
                yield info.path

    @contextmanager
    def _writing(self) -> Iterator[MlflowClient]:
        """The client, for database writes, one thread at a time.

        MLflow's SQL store opens a second pooled connection inside most writes (create_run,
        log_batch). With as many concurrent writers as the pool holds (15) each waits for a
        second connection, and all fail after 30 s. Serialising writes costs nothing on
        SQLite, which admits one writer at a time anyway.
        """
        client = self.client
        with self._lock:
            yield client

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        items = [RunTag(k, _short(str(v), MAX_TAG_CHARS)) for k, v in tags.items()]
        with self._writing() as client:
            for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, tags=chunk)

    def _log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        with self._writing() as client:
            for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=chunk)

    def _terminate(self, run_id: str, status: str) -> None:
        with self._writing() as client:
            client.set_terminated(run_id, status=status)


# The one piece of module state, on purpose: what these locks guard is process-wide in
# MLflow too (the cached SQL store of a URI, its connection pool, its first-time
# migrations), and tasks may each build their own LineageStore.
_STORE_LOCKS: dict[str, _StoreLock] = {}


class _StoreLock:
    """A re-entrant lock for one store's threads, remembering whether its holder also holds the file lock."""

    def __init__(self) -> None:
        self._thread = threading.RLock()
        self.file_held = False  # read and written only by the thread holding _thread

    def __enter__(self) -> None:
        self._thread.acquire()

    def __exit__(self, *exc: object) -> None:
        self._thread.release()


def _store_lock(tracking_uri: str) -> _StoreLock:
    """The lock of one tracking store, shared by every LineageStore of this process on it."""
    # dict.setdefault is atomic: two threads asking at once get the same lock (a spare may be built).
    return _STORE_LOCKS.setdefault(tracking_uri, _StoreLock())


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at uri for the duration.

    mlflow.pytorch.log_model takes no client or URI: it reads the global one. Restores both
    the global and $MLFLOW_TRACKING_URI (which set_tracking_uri overwrites) afterwards.
    """
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)
        if saved_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class Claim:
    """What claim_trial found: a finished result, or the id of the run the caller now owns."""

    result: Evaluation | None = None
    run_id: str | None = None


def _dead_owner(tags: dict[str, str]) -> str | None:
    """Why a running claim's owner is dead, or None while it lives."""
    host, _, pid = tags.get("nas.owner", ":").rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
        return f"its process {pid} on {host} is gone (killed or crashed); a new attempt took the trial over"
    age = time.time() - float(tags.get("nas.heartbeat") or 0)
    if age > CLAIM_LEASE_SECONDS:
        return (f"no heartbeat from {tags.get('nas.owner', 'its owner')} for {age:.0f} s; a new attempt took "
                "the trial over")
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _local_dir(uri: str) -> Path | None:
    """The folder behind a local artifact URI (file:///... or a plain path), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if not parsed.scheme else None


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = _short(_text(value), MAX_CONFIG_PARAM_CHARS)
    return flat


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)
