"""Writing runs: a search's parent run, the claim that lets one process train each trial, and its outcome.

Claims live with the runs they create: a claim is the trial's run itself, RUNNING and tagged
with its owner and a heartbeat, so that every process sees who trains what and takes over
from an owner that died.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, Run

from nas.data import PREPARED_FILES, DataMeta
from nas.ids import digest
from nas.lineage.connection import (MAX_CONFIG_PARAM_CHARS, MAX_PARAMS_PER_BATCH, LineageError, _chunks,
                                    _short, _tag_values)
from nas.lineage.datasets import dataset_input
from nas.lineage.layout import (ARCHITECTURE_FILE, CELL_DRAWING_FILE, CHECKPOINT_FILE, CONFIG_FILE, DATA_FOLDER,
                                EVALUATION_FILE, KIND_DATA, KIND_PREDICTOR, KIND_SEARCH, KIND_TRIAL, PREDICTOR_FILE,
                                STRATEGY_REPORT_FILE, TOLD_FILE, WEIGHTS_FILE)
from nas.lineage.queries import StoreQueries
from nas.secrets import redact
from nas.space.cell import cell_spec
from nas.trial import Candidate, Evaluation, TrialStatus

if TYPE_CHECKING:
    import torch

HEARTBEAT_SECONDS = 10.0  # how often a training run says it is alive ...
CLAIM_LEASE_SECONDS = 60.0  # ... and how long without a word before another host's process takes it over
# Through a tracking server: how long a claim waits for claims written at the same moment (_standing).
# Every client of one store must use the same value; raise it (NAS_CLAIM_SETTLE_SECONDS) where a
# write to the server can take longer, or claims keep withdrawing.
SETTLE_SECONDS = float(os.environ.get("NAS_CLAIM_SETTLE_SECONDS", "3.0"))


class StoreRuns(StoreQueries):
    """Writes of searches and trials; built on the reads, because a claim first looks for a result."""

    # -- searches ----------------------------------------------------------------------

    def start_search(self, config: dict[str, Any], space_file: Path | None,
                     data_fingerprint: str, tags: dict[str, str] | None = None,
                     identity: dict[str, Any] | None = None) -> str:
        """The parent run of one search; a repeated search (same identity, default the whole
        config, and same data) reuses it."""
        key = digest({"config": identity if identity is not None else config, "data": data_fingerprint})
        config = json.loads(redact(json.dumps(config)))  # what is recorded holds no password (a URI's)
        search_tags = {
            "nas.search_key": key,
            "nas.kind": KIND_SEARCH,
            "nas.strategy": str(config.get("strategy", "")),
            "nas.data_fp": data_fingerprint,
            **(tags or {}),
        }
        params = _flatten(config)
        of_key = f"tags.`nas.search_key` = '{key}' and tags.`nas.kind` = '{KIND_SEARCH}'"
        while True:
            # Under the store's exclusive lock: two processes starting one search find one run
            # (through a tracking server, the one that `_standing` settles on).
            with self._exclusive(), self._writing() as client:
                asked = time.monotonic()
                # Of two runs that a server's clients created at once, the one `_standing` keeps.
                found = sorted(self._search(of_key), key=_standing_order)[:1]
                if found:
                    run_id = found[0].info.run_id
                    client.update_run(run_id, status="RUNNING")
                    # A param never changes in MLflow: what is not part of the identity (--concurrency,
                    # the tracking URI) keeps the value of the first run; config.json has the latest.
                    params = {k: v for k, v in params.items() if k not in found[0].data.params}
                else:
                    name = f"search-{config.get('strategy', 'nas')}-{key[:8]}"
                    # Tagged as it is created: a process killed right after must leave a run that
                    # the next attempt finds by its key, not a stray second search.
                    run_id = client.create_run(self.experiment_id, run_name=name,
                                               tags=_tag_values(search_tags)).info.run_id
                    took = time.monotonic() - asked
            if found or self._standing(of_key, run_id, took) == run_id:
                break
        with self._writing() as client:
            # A resumed search that crashed mid-way still ends up with all of them.
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

    def log_result(self, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """Add final numbers and notes to a finished run (e.g. the one test measurement)."""
        now = _now_ms()
        self._log_metrics(run_id, [Metric(k, float(v), now, 0) for k, v in metrics.items()])
        self._set_tags(run_id, tags)

    def log_report(self, run_id: str, report: dict[str, Any]) -> None:
        """The search's strategy state for people to read (`Strategy.report`), replaced as it changes."""
        self.client.log_dict(run_id, report, STRATEGY_REPORT_FILE)

    def log_file(self, run_id: str, path: Path) -> None:
        with self._writing() as client:
            client.log_artifact(run_id, str(path))

    def log_bytes(self, run_id: str, name: str, data: bytes) -> None:
        """A file made in memory (e.g. a strategy's weights) as the artifact `name` ("folder/file")."""
        folder, _, file = name.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp, self._writing() as client:
            (Path(tmp) / file).write_bytes(data)
            client.log_artifact(run_id, str(Path(tmp) / file), folder or None)

    def log_told(self, search_run_id: str, run_ids: list[str]) -> None:
        """The runs of a search's results, found under another search included (see `trials_of`)."""
        self.log_bytes(search_run_id, TOLD_FILE, json.dumps(run_ids).encode())

    def start_run_of(self, kind: str, name: str, tags: dict[str, str]) -> str:
        """A running run of a kind other than search or trial (a predictor, a learned optimiser)."""
        with self._writing() as client:
            return client.create_run(self.experiment_id, run_name=name,
                                     tags=_tag_values({"nas.kind": kind, **tags})).info.run_id

    def finish_run_of(self, run_id: str, files: dict[str, bytes], metrics: dict[str, float]) -> None:
        """Its files ("folder/file" -> bytes) and final numbers; then it ends, FINISHED."""
        for name, data in files.items():
            self.log_bytes(run_id, name, data)
        self.log_result(run_id, metrics, {})
        self._terminate(run_id, "FINISHED")

    def share_data(self, meta: DataMeta, data_dir: Path) -> str:
        """The prepared data folder as a run of its own, keyed by its fingerprint and logged once,
        from which the workers of a cluster fetch it (`fetch_data`)."""
        if (run_id := self.finished_run_of(KIND_DATA, meta.fingerprint)) is not None:
            return run_id
        self.abandon_runs_of(KIND_DATA, meta.fingerprint, "an earlier upload of this data was interrupted")
        run_id = self.start_run_of(KIND_DATA, f"data {meta.name}", {"nas.run_key": meta.fingerprint})
        # The files `prepare` wrote, and nothing else the user keeps in that folder.
        files = {f"{DATA_FOLDER}/{name}": (data_dir / name).read_bytes() for name in PREPARED_FILES}
        self.finish_run_of(run_id, files, {})
        return run_id

    def reopen_run_of(self, kind: str, key: str) -> str | None:
        """The newest run of this kind and `nas.run_key` that an attempt left unfinished (killed:
        RUNNING; interrupted: KILLED), running again for this attempt to continue; None if none."""
        runs = [run for run in self._search(f"tags.`nas.kind` = '{kind}' and tags.`nas.run_key` = '{key}'",
                                            order_by=["attributes.start_time DESC"])
                if run.info.status in ("RUNNING", "KILLED")]
        for older in runs[1:]:  # only from attempts that ran at the same time, which they must not
            self.fail_trial(older.info.run_id, "a newer attempt of the same job continues instead")
        if not runs:
            return None
        with self._writing() as client:
            client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id

    def interrupt_run(self, run_id: str) -> None:
        """Stopped by the user (Ctrl-C): the run ends KILLED, for reopen_run_of to continue."""
        self._terminate(run_id, "KILLED")

    def abandon_runs_of(self, kind: str, key: str, reason: str) -> None:
        """Mark failed the unfinished runs of this kind and `nas.run_key` (a killed attempt's)."""
        for run in self._search(f"tags.`nas.kind` = '{kind}' and tags.`nas.run_key` = '{key}' and "
                                "attributes.status = 'RUNNING'"):
            self.fail_trial(run.info.run_id, reason)

    def log_predictor(self, model: bytes, metrics: dict[str, float], tags: dict[str, str]) -> str:
        """A fitted performance predictor as a finished run of its own kind: the model's bytes
        (`PREDICTOR_FILE`), its held-out rank correlation and what it was fitted on."""
        run_id = self.start_run_of(KIND_PREDICTOR, "predictor", tags)
        self.finish_run_of(run_id, {PREDICTOR_FILE: model}, metrics)
        return run_id

    # -- claims ------------------------------------------------------------------------

    def claim_trial(self, candidate: Candidate, trial_key: str, *, parent_run_id: str | None,
                    strategy: str, data_fingerprint: str, tags: dict[str, str] | None = None,
                    kind: str = KIND_TRIAL, dataset: DataMeta | None = None, poll_seconds: float = 0.5) -> Claim:
        """The finished result of `trial_key`, or a new run of it that the caller now owns and must train.

        Two threads or two processes asking for one key never both train it. Checking for a
        result or a live claim and creating the run happen under one lock (a file lock beside a
        local database); through a tracking server no lock spans two processes, and `_standing`
        settles claims written at the same moment. Whoever finds a live claim waits for its
        result. A claim whose owner died is abandoned, explained in its tags, and taken over: on
        this host when its process is gone; elsewhere when its heartbeat has not changed for
        CLAIM_LEASE_SECONDS of this claimant's own watching (no two machines' clocks are compared).
        """
        watch = _HeartbeatWatch()
        while True:
            run_id = None
            with self._exclusive():
                asked = time.monotonic()
                # One query, read as one snapshot: an owner finishing between a query for
                # results and a query for claims would be seen by neither.
                runs = self._search(f"tags.`nas.trial_key` = '{trial_key}'")
                if self._settle_interrupted(runs):
                    runs = self._search(f"tags.`nas.trial_key` = '{trial_key}'")
                finished = [run for run in runs if run.info.status == "FINISHED"]
                if finished:
                    return Claim(result=self._evaluation(finished[0]))
                if not self._live_claims([run for run in runs if run.info.status == "RUNNING"], watch):
                    run_id, landed = self._start_trial(candidate, trial_key, parent_run_id=parent_run_id,
                                                       strategy=strategy, data_fingerprint=data_fingerprint, tags=tags,
                                                       kind=kind, dataset=dataset)
                    took = landed - asked
            # Outside the lock: settling waits, and the other threads' claims need not.
            if run_id is not None and self._standing(f"tags.`nas.trial_key` = '{trial_key}'", run_id, took) == run_id:
                return Claim(run_id=run_id)
            time.sleep(poll_seconds)

    def _standing(self, filter_string: str, run_id: str, took: float) -> str | None:
        """Of the runs matching `filter_string`, the one that stands, now that this process created
        `run_id` among them `took` seconds after it looked and found none; the others withdraw.

        With the file lock `run_id` stands. Through a tracking server two processes may each look,
        find nothing, and write. So a new run decides only after SETTLE_SECONDS, and only if its
        own look-then-write took less than that (on this process's monotonic clock): then any run
        it did not see when it looked landed before its decision, and is seen now; a run written
        later looked after this one landed, and found it. Of the runs seen now, a finished one,
        else the lowest run id stands: an order every process computes alike, with no clock in
        it. A write slower than the settle time withdraws (None): look again.
        """
        if self.artifact_dir is not None:
            return run_id
        if took >= SETTLE_SECONDS:
            reason = (f"its write took {took:.1f} s to land, longer than the {SETTLE_SECONDS:g} s it waits for others "
                      "written at the same moment; it looked again")
            logging.getLogger(__name__).warning("run %s withdrawn: %s (if the server is always this slow, set "
                                                "NAS_CLAIM_SETTLE_SECONDS higher on every client)", run_id, reason)
            self._withdraw(run_id, reason)
            return None
        time.sleep(SETTLE_SECONDS)
        # Earlier attempts that failed or were abandoned are history, not rivals.
        runs = [run for run in self._search(filter_string) if run.info.status in ("RUNNING", "FINISHED")]
        if not runs:  # ours was withdrawn by someone else meanwhile: look again
            return None
        first = min(runs, key=_standing_order).info.run_id
        if first != run_id:
            self._withdraw(run_id, f"run {first} was created for the same purpose at the same moment; this one "
                                   "stepped aside for it")
        return first

    def _withdraw(self, run_id: str, reason: str) -> None:
        """End a run that holds no result, KILLED with the reason, and delete it (restorable until `nas gc`)."""
        self._set_tags(run_id, {"nas.status": TrialStatus.ABANDONED.value, "nas.reason": reason})
        self._terminate(run_id, "KILLED")
        with self._writing() as client:
            client.delete_run(run_id)

    def abandon_dead_trials(self, parent_run_id: str) -> None:
        """Abandon the running trials under a run (a search, or an architecture being refined) whose
        owner died on this host: a killed attempt's trial that its resumed search no longer asks
        for (it asks in other rounds past what it replays). Another host's claims are left to
        the lease of whoever asks for their trial."""
        with self._exclusive():
            runs = self._search(f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`nas.kind` = '{KIND_TRIAL}' "
                                "and attributes.status != 'FINISHED'")
            self._settle_interrupted(runs)
            self._live_claims([run for run in runs if run.info.status == "RUNNING"], _HeartbeatWatch())

    def _live_claims(self, running: list[Run], watch: _HeartbeatWatch) -> list[Run]:
        """The running runs whose owner lives; dead owners' runs are abandoned on the way."""
        live = []
        for run in running:
            why_dead = _dead_owner(run, watch)
            if why_dead is None or not self._abandon(run.info.run_id, why_dead):
                live.append(run)
        return live

    def _abandon(self, run_id: str, reason: str) -> bool:
        """Mark a dead owner's run abandoned and delete it (MLflow keeps it restorable until
        `nas gc`), unless it finished meanwhile; returns whether it was abandoned.

        Called under `_exclusive`, which `finish_trial` takes to end a run: on a local store
        finishing and abandoning exclude each other. Files are left for `nas gc`: nothing here
        removes a folder that a run's record names.
        """
        if self._reader().get_run(run_id).info.status != "RUNNING":
            return False  # it ended since it was looked at: a result, or someone else's doing
        self._terminate(run_id, "KILLED")  # from here on its owner, should it wake, leaves the run alone
        return self._end_killed(self._reader().get_run(run_id), reason)

    def _end_killed(self, run: Run, reason: str) -> bool:
        """Finish taking over a trial run ended KILLED (only a take-over ends one so); returns whether
        it was abandoned. An owner tags its outcome last, just before it ends the run: seen now, the
        owner finished while the take-over looked (through a server no lock kept it out), and its
        result stands, ended as the owner would have. Else the run is withdrawn."""
        outcome = run.data.tags.get("nas.status")
        if outcome not in (None, TrialStatus.RUNNING.value, TrialStatus.ABANDONED.value):
            self._terminate(run.info.run_id, _ending(outcome))
            return False
        if outcome == TrialStatus.ABANDONED.value:  # killed inside _withdraw: its reason is written
            reason = run.data.tags.get("nas.reason", reason)
        self._withdraw(run.info.run_id, reason)
        return True

    def _settle_interrupted(self, runs: list[Run]) -> bool:
        """Finish the take-overs that a kill -9 interrupted between their steps (a KILLED trial run not
        yet deleted); returns whether there were any."""
        killed = [run for run in runs if run.info.status == "KILLED"]
        for run in killed:
            self._end_killed(run, "its owner is gone, and the attempt that took it over was killed before it "
                                  "was done; a later attempt finished the take-over")
        return bool(killed)

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

    # -- trials ------------------------------------------------------------------------

    def _start_trial(self, candidate: Candidate, trial_key: str, *, parent_run_id: str | None,
                     strategy: str, data_fingerprint: str, tags: dict[str, str] | None = None,
                     kind: str = KIND_TRIAL, dataset: DataMeta | None = None) -> tuple[str, float]:
        """A new run of the trial, and when (on the monotonic clock) the claim it makes landed."""
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
            "nas.owner_started": _started(os.getpid()) or "",
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
                tags=_tag_values(run_tags)).info.run_id
            landed = time.monotonic()
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            if dataset is not None:
                client.log_inputs(run_id, [dataset_input(dataset)])
        self.client.log_dict(run_id, {"arch": candidate.arch.to_json(),
                                      "hparams": candidate.hparams.to_json()}, ARCHITECTURE_FILE)
        return run_id, landed

    def log_step(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Log one epoch's (or fold's) metrics as it ends, so the UI's curves grow while a trial trains."""
        now = _now_ms()
        self._log_metrics(run_id, [Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish_trial(self, run_id: str, evaluation: Evaluation, weights: dict[str, torch.Tensor] | None = None,
                     checkpoint: dict[str, Any] | None = None, streamed: Collection[tuple[str, int]] = ()) -> None:
        """Record the outcome; a failed candidate is still a FINISHED run: it was evaluated.

        `streamed`: the (metric, step) points of `evaluation.curves()` already logged by
        log_step; the rest (a resumed run's earlier epochs, the means of cross-validation, a
        point whose streaming failed) are logged now.
        """
        if self._taken_over(run_id):
            return
        now = _now_ms()
        metrics = [Metric(name, float(v), now, step) for name, step, v in evaluation.curves()
                   if (name, step) not in streamed]
        finals = {"val_acc": evaluation.val_acc, "val_loss": evaluation.val_loss, "test_acc": evaluation.test_acc,
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
        record = evaluation.to_json()
        record["run_id"] = run_id
        self.client.log_dict(run_id, record, EVALUATION_FILE)
        if weights is not None:
            self._log_weights(run_id, weights)
        if checkpoint is not None:
            self.log_checkpoint(run_id, checkpoint)
        for node in evaluation.candidate.arch.nodes:
            if node.op == "cell":  # a tree reads better drawn than as twenty attributes
                from nas.reports import draw_cell
                self.log_bytes(run_id, CELL_DRAWING_FILE, draw_cell(cell_spec(node.attr_dict)))
        # The outcome's tags once everything else is written: a claimant taking over reads them (`_abandon`).
        self._set_tags(run_id, outcome)
        # Last: find() trusts a FINISHED run to hold everything above.
        self._end_owned(run_id, _ending(evaluation.status.value))

    def _end_owned(self, run_id: str, status: str) -> None:
        """End a run this process owns, unless another process took it over meanwhile (or, having seen
        its outcome, ended it so itself)."""
        with self._exclusive():
            if not self._taken_over(run_id):
                self._terminate(run_id, status)

    def _taken_over(self, run_id: str) -> bool:
        """Whether another process ended this process's run: abandoned it (it saw no heartbeat for the
        lease), and then the new owner's result is the trial's and this one's is dropped, said in the log;
        or, taking over, saw this run's outcome and ended it as this process would have."""
        run = self._reader().get_run(run_id)
        if run.info.lifecycle_stage != "deleted" and run.info.status == "RUNNING":
            return False
        if run.info.lifecycle_stage != "deleted" and run.info.status in ("FINISHED", "FAILED"):
            return True  # a claimant saw this run's outcome and ended it as this owner would have
        logging.getLogger(__name__).warning(
            "run %s was taken over by another process while this one trained it (%s); its result is left to the "
            "new owner", run_id, run.data.tags.get("nas.reason", "no reason recorded"))
        return True

    def add_test_accuracy(self, evaluation: Evaluation) -> None:
        """A finished trial's test accuracy, measured after it finished (see nas.runner._with_test)."""
        assert evaluation.run_id is not None and evaluation.test_acc is not None
        self.log_result(evaluation.run_id, {"test_acc": evaluation.test_acc}, {})
        self.client.log_dict(evaluation.run_id, evaluation.to_json(), EVALUATION_FILE)

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

    def log_checkpoint(self, run_id: str, checkpoint: dict[str, Any]) -> None:
        """State to continue the run from (tensors and plain containers), read back by `checkpoint`."""
        import torch

        with tempfile.TemporaryDirectory(prefix="nas-checkpoint-") as folder:
            path = Path(folder) / CHECKPOINT_FILE
            torch.save(checkpoint, path)
            self.client.log_artifact(run_id, str(path))


@dataclass(frozen=True)
class Claim:
    """What claim_trial found: a finished result, or the id of the run the caller now owns."""

    result: Evaluation | None = None
    run_id: str | None = None


def _ending(outcome: str) -> str:
    """The MLflow status a trial's run ends with, by its outcome (tag nas.status): a failure of the
    environment ends FAILED, so that no later search takes it for a result; the rest FINISHED."""
    return "FAILED" if outcome == TrialStatus.ERROR.value else "FINISHED"


def _standing_order(run: Run) -> tuple[bool, str]:
    """Which of the runs made for one purpose stands (see StoreRuns._standing): a finished one, else the lowest id."""
    return run.info.status != "FINISHED", run.info.run_id


class _HeartbeatWatch:
    """What one claimant has seen of other owners' heartbeats: a run's heartbeat tag and, on this
    process's monotonic clock, when it was first seen with that value."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def silent_for(self, run_id: str, heartbeat: str) -> float:
        """Seconds this claimant has watched `run_id`'s heartbeat stay at `heartbeat`."""
        now = time.monotonic()
        value, since = self._seen.get(run_id, (None, now))
        if value != heartbeat:
            self._seen[run_id] = (heartbeat, now)
            return 0.0
        return now - since


def _dead_owner(run: Run, watch: _HeartbeatWatch) -> str | None:
    """Why a running claim's owner is dead, or None while it lives.

    An owner on this host lives while its process does, whatever its heartbeat says (it may be
    stopped with Ctrl-Z, or its laptop asleep). Another host's owner is dead once its heartbeat
    has stayed the same for CLAIM_LEASE_SECONDS of watching: the heartbeat's value is never
    compared with this machine's clock, which may be minutes off the owner's.
    """
    tags = run.data.tags
    owner = tags.get("nas.owner", ":")
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if _process_alive(int(pid), tags.get("nas.owner_started")):
            return None
        return f"its process {pid} on {host} is gone (killed or crashed); a new attempt took the trial over"
    silent = watch.silent_for(run.info.run_id, tags.get("nas.heartbeat", ""))
    if silent >= CLAIM_LEASE_SECONDS:
        return f"no heartbeat from {owner} for {silent:.0f} s of watching; a new attempt took the trial over"
    return None


def _process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` lives and, where its start time was recorded, is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return not started or started == _started(pid)


def _started(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks after boot), or None where it cannot be read.

    Pids are reused, soon where many threads are started (each takes one): a killed owner's
    pid may name another process, or another's thread, a minute later. With its start time it does not.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


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


def _now_ms() -> int:
    return int(time.time() * 1000)
