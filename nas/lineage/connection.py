"""Reaching the store: its tracking URI, its MLflow client and experiment, and the locks around writes.

The rest of the package says what to read or write; the rules of concurrent use (one writer
per store at a time, a file lock across processes for SQLite) live here alone, in the base
class that every part of LineageStore goes through.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from mlflow import __version__ as mlflow_version
from mlflow.entities import Metric, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nas.secrets import redact, without_password

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DEFAULT_STORE_DIR = "mlflow"  # relative to the project root (current working directory)
DATABASE_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
LOCK_FILE = "store.lock"

# MLflow's limits per log_batch call; longer values are truncated rather than rejected.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_CONFIG_PARAM_CHARS = 500
MAX_TAG_CHARS = 5000

# Per database dialect, index name -> table (columns): see StoreConnection.add_indexes.
INDEXES = {
    "sqlite": {"nas_tags_key_value": "tags (key, value)",
               "nas_latest_metrics_key_value": "latest_metrics (key, value)"},
    "postgresql": {"nas_latest_metrics_key_value": "latest_metrics (key, value)"},
}

FIX_HINT = ("start the tracking server, check MLFLOW_TRACKING_URI, or pass --tracking-uri "
            "(the default needs no server: a SQLite file under ./mlflow/)")


class LineageError(RuntimeError):
    """The lineage store cannot be reached or does not hold what was asked for."""


def resolve_tracking_uri(uri: str | None = None, root: Path | None = None) -> str:
    """uri if given, else $MLFLOW_TRACKING_URI, else sqlite:///<abs root>/mlflow/mlflow.db.

    A relative SQLite path is made absolute against root (default: the current directory),
    because DVC stages and temporary clones run in other directories and would otherwise
    each grow their own empty database. A password in the URI moves to the environment
    (`without_password`), so that no record, log line or flow parameter holds it.
    """
    root = (root or Path.cwd()).absolute()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return _absolute_sqlite(without_password(uri), root)
    store_dir = root / DEFAULT_STORE_DIR
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LineageError(f"cannot create the MLflow store folder {store_dir}: {error}. Make the "
                           "project folder writable, or " + FIX_HINT + ".") from error
    return f"sqlite:///{store_dir / DATABASE_FILE}"


def _open_client(uri: str) -> MlflowClient:
    """A client of the store; opening a local database checks its schema, which an older MLflow may have made."""
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException as error:
        _raise_if_outdated(uri, error)
        raise


def _raise_if_outdated(uri: str, error: Exception) -> None:
    """A store whose schema an older MLflow made, said in one paragraph with the command that upgrades it."""
    found = re.search(r"out-of-date database schema \(found version (\w+), but expected (\w+)\)", str(error))
    if found:
        raise LineageError(
            f"the MLflow store at {uri} was written by an older MLflow (schema {found[1]}; this MLflow, "
            f"{mlflow_version}, reads {found[2]}). Back the database up, then upgrade it in place: "
            f"{sys.executable} -m mlflow db upgrade '{uri}'") from None


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


class StoreConnection:
    """One tracking URI's experiment, and the primitives every read and write of the store goes through."""

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
        self._engine: Engine | None = None

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
                    self._create_database()
                    client = MlflowClient(tracking_uri=self.tracking_uri)
                    experiment_id = self._get_or_create_experiment(client)  # MLflow's tables exist after this
                    self.add_indexes()
                except LineageError:
                    raise
                except Exception as error:  # any failure of first contact leaves the store unusable
                    _raise_if_outdated(self.tracking_uri, error)
                    raise LineageError(
                        f"cannot use the MLflow tracking store at {self.tracking_uri}: "
                        f"{type(error).__name__}: {_short(redact(str(error)), 500)}. Fix: {FIX_HINT}."
                    ) from error
                self._client, self._experiment_id = client, experiment_id
            return self._experiment_id

    def _create_database(self) -> None:
        """A new SQLite store is migrated in a scratch file, then renamed into place: a process killed
        during MLflow's first-time migrations (seconds) leaves no half-made database, on which every
        later process would fail ("table ... already exists")."""
        database = _sqlite_file(self.tracking_uri)
        if database is None or database.exists():
            return
        # Named anew each time: MLflow keeps one store per URI for the process, and a second store
        # made here (the first deleted meanwhile) must not find the first one's scratch URI cached.
        scratch = database.with_name(f".{database.name}.{uuid.uuid4().hex}.new")
        _, query = _split_query(self.tracking_uri.removeprefix("sqlite:///"))
        MlflowClient(tracking_uri=f"sqlite:///{scratch}{query}").search_experiments(max_results=1)
        os.replace(scratch, database)

    def _database(self) -> Engine | None:
        """The store's own database (a SQLite file or PostgreSQL), for the few queries MLflow's API
        makes slow; None for a tracking server, whose database only it can reach."""
        dialect = self.tracking_uri.partition(":")[0].partition("+")[0]
        if dialect not in INDEXES or (dialect == "sqlite" and _sqlite_file(self.tracking_uri) is None):
            return None
        if self._engine is None:
            import sqlalchemy

            wait = {"timeout": 30} if dialect == "sqlite" else {}  # for a writer to finish, as MLflow's own does
            self._engine = sqlalchemy.create_engine(self.tracking_uri, pool_size=1, connect_args=wait)
        return self._engine

    def add_indexes(self) -> None:
        """Indexes MLflow's schema lacks (once its tables exist: `ensure`, or `nas server` once the
        MLflow server has made them), for lookups a search repeats at every size of store: runs
        by a metric's value (the leaderboard) and, on SQLite, by a tag's value (a trial key; on
        PostgreSQL a tag's value can outgrow an index entry). Extra indexes change no table, so
        MLflow's migrations are unaffected."""
        if (engine := self._database()) is None:
            return
        import sqlalchemy

        with engine.begin() as db:
            for name, columns in INDEXES[engine.dialect.name].items():
                db.execute(sqlalchemy.text(f"CREATE INDEX IF NOT EXISTS {name} ON {columns}"))

    def sorted_run_ids(self, where_tags: dict[str, str], by: tuple[str, str], k: int) -> list[str] | None:
        """The ids of this experiment's first k FINISHED runs with these tags, by metric `by[0]`
        descending, then `by[1]` ascending (NaN, then none, last), then start time, as MLflow
        orders them: one indexed walk down the first metric that stops after k (milliseconds at
        any size), where MLflow's own query sorts every run (13 s at 10,000 runs on SQLite,
        growing quadratically; 0.1 s on PostgreSQL). None through a tracking server, and should
        MLflow's tables ever change shape: then ask MLflow."""
        engine, experiment_id = self._database(), self._find_experiment()
        if engine is None or experiment_id is None:
            return None
        import sqlalchemy

        # SQLite's planner must be told to walk the index; PostgreSQL's finds the walk itself.
        walk = ("INDEXED BY nas_latest_metrics_key_value CROSS JOIN" if engine.dialect.name == "sqlite" else "JOIN")
        joins = "".join(f" JOIN tags t{i} ON t{i}.run_uuid = r.run_uuid AND t{i}.key = :k{i} AND t{i}.value = :v{i}"
                        for i in range(len(where_tags)))
        query = sqlalchemy.text(
            f"SELECT r.run_uuid FROM latest_metrics m {walk} runs r ON r.run_uuid = m.run_uuid{joins} "
            "LEFT JOIN latest_metrics l ON l.run_uuid = r.run_uuid AND l.key = :then_by "
            "WHERE m.key = :by AND r.experiment_id = :experiment AND r.status = 'FINISHED' "
            "AND r.lifecycle_stage = 'active' "
            "ORDER BY m.value DESC, CASE WHEN l.is_nan THEN 1 WHEN l.value IS NULL THEN 2 ELSE 0 END, l.value, "
            "r.start_time, r.run_uuid LIMIT :k")
        values = {"by": by[0], "then_by": by[1], "experiment": int(experiment_id), "k": k}
        for i, (key, value) in enumerate(where_tags.items()):
            values.update({f"k{i}": key, f"v{i}": value})
        try:
            with engine.connect() as db:
                return [row[0] for row in db.execute(query, values)]
        except sqlalchemy.exc.SQLAlchemyError:
            return None

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
            client = _open_client(self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is None or found.lifecycle_stage != "active":
                return None
            self._client, self._experiment_id = client, found.experiment_id  # client first: see `client`
        return self._experiment_id

    def _reader(self) -> MlflowClient:
        """A client for reads by run id, which need no experiment of this store's (run ids are global)."""
        return self._client or _open_client(self.tracking_uri)

    @property
    def experiment_id(self) -> str:
        return self._experiment_id or self.ensure()

    @property
    def client(self) -> MlflowClient:
        self.ensure()
        assert self._client is not None
        return self._client

    def ui_command(self) -> list[str]:
        command = ["mlflow", "ui", "--backend-store-uri", self.tracking_uri,
                   "--host", "127.0.0.1", "--port", "5000"]
        if self.artifact_dir is not None:
            command += ["--default-artifact-root", self.artifact_dir.as_uri()]
        return command

    def gc_command(self) -> list[str]:
        """MLflow's own purge of deleted runs (abandoned attempts), rows and artifacts, for good."""
        return [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", self.tracking_uri,
                "--tracking-uri", self.tracking_uri]

    # -- locks -------------------------------------------------------------------------

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

    # -- runs --------------------------------------------------------------------------

    def _search(self, filter_string: str, order_by: list[str] | None = None,
                max_results: int | None = None, everywhere: bool = False) -> list[Run]:
        """Runs of this experiment (`everywhere`: of every experiment) matching filter_string,
        following pages past MLflow's 1000.

        Empty where the experiment does not exist yet: searching never creates it.
        """
        experiment_ids = [e.experiment_id for e in self.client.search_experiments()] if everywhere \
            else [self._find_experiment()]
        if None in experiment_ids or not experiment_ids:
            return []
        runs: list[Run] = []
        token = None
        while True:
            page_size = min(1000, max_results - len(runs)) if max_results else 1000
            page = self.client.search_runs(experiment_ids, filter_string=filter_string,
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

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        items = [RunTag(k, v) for k, v in _tag_values(tags).items()]
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


def _local_dir(uri: str) -> Path | None:
    """The folder behind a local artifact URI (file:///... or a plain path), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if not parsed.scheme else None


def _tag_values(tags: dict[str, Any]) -> dict[str, str]:
    """Tags as MLflow takes them: strings, cut to its length limit."""
    return {k: _short(str(v), MAX_TAG_CHARS) for k, v in tags.items()}


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
