"""Reading the store: what any search method found, its weights and checkpoints, and the tables the CLI prints.

Reads never create a store or an experiment (see StoreConnection._search), and artifacts of a
local store are read in place, so listing runs and replaying history stay fast. torch and
safetensors are imported only where weights are read.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Run

from nas.lineage.connection import LineageError, StoreConnection, _local_dir
from nas.lineage.layout import (ARCHITECTURE_FILE, CHECKPOINT_FILE, CONFIG_FILE, DATA_FOLDER, EVALUATION_FILE,
                                KIND_DATA, KIND_SEARCH, KIND_TRIAL, LEARNED_OPTIMIZER_FILE, TOLD_FILE, WEIGHTS_FILE)
from nas.data import PREPARED_FILES
from nas.trial import Evaluation, TrialStatus

# Validation accuracies the leaderboard asks for first through a tracking server (_best_runs):
# each bar lets about four times as many runs through as the one before.
VAL_ACC_BARS = (0.999, 0.996, 0.984, 0.936, 0.744)
# The leaderboard's order, in MLflow's terms: ties go to the lower validation loss, then the earlier run.
LEADERBOARD_ORDER = ("metrics.val_acc DESC", "metrics.val_loss ASC", "attributes.start_time ASC")

if TYPE_CHECKING:
    import torch


class StoreQueries(StoreConnection):
    """Reads of runs and their artifacts."""

    def find(self, trial_key: str) -> Evaluation | None:
        """The Evaluation of a finished run of this candidate, else None."""
        found = self._search(self._finished_of(trial_key), max_results=1)
        return self._evaluation(found[0]) if found else None

    def has_result(self, trial_key: str) -> bool:
        """Whether a finished run of this candidate exists (without reading it)."""
        return bool(self._search(self._finished_of(trial_key), max_results=1))

    @staticmethod
    def _finished_of(trial_key: str) -> str:
        return f"tags.`nas.trial_key` = '{trial_key}' and attributes.status = 'FINISHED'"

    def history(self) -> list[Evaluation]:
        """Every evaluated candidate of the experiment (failures included), oldest first."""
        runs = self._search(f"tags.`nas.kind` = '{KIND_TRIAL}' and attributes.status = 'FINISHED'",
                            order_by=["attributes.start_time ASC"])
        return [self._evaluation(run) for run in runs]

    def trials_of(self, search_run_id: str) -> list[Evaluation]:
        """The evaluated candidates of one search (or the children of any run), oldest first.

        Besides its children, a search's results include trials it found recorded by another
        search (the same candidate, data and seed), which it lists in TOLD_FILE.
        """
        search = self._get_run(search_run_id)  # a clear error for a wrong id, not an empty list
        finished = f"tags.`nas.kind` = '{KIND_TRIAL}' and attributes.status = 'FINISHED'"
        runs = {run.info.run_id: run for run in self._search(f"{finished} and tags.`mlflow.parentRunId` = "
                                                                 f"'{search_run_id}'")}
        told = json.loads(self._read(search, TOLD_FILE) or b"[]")
        if told:  # a claim finds results in its own experiment, so they are all here
            ids = ", ".join(f"'{run_id}'" for run_id in told)
            runs.update((run.info.run_id, run) for run in self._search(f"{finished} and attributes.run_id IN ({ids})"))
        return [self._evaluation(run) for run in sorted(runs.values(), key=lambda run: run.info.start_time)]

    def trained_on(self, data_fingerprint: str, besides: str | None = None) -> list[Evaluation]:
        """Every successful trial of every experiment on this data (by fingerprint), whatever
        method proposed it, oldest first; `besides`: leave out the trials of this search run."""
        others = f" and tags.`mlflow.parentRunId` != '{besides}'" if besides else ""
        runs = self._search(f"tags.`nas.kind` = '{KIND_TRIAL}' and attributes.status = 'FINISHED' and "
                            f"tags.`nas.data_fp` = '{data_fingerprint}' and "
                            f"tags.`nas.status` = '{TrialStatus.OK.value}'{others}",
                            order_by=["attributes.start_time ASC"], everywhere=True)
        return [self._evaluation(run) for run in runs]

    def evaluations(self, run_ids: list[str]) -> list[Evaluation]:
        """The recorded results of these runs, in this order."""
        return [self._evaluation(self._get_run(run_id)) for run_id in run_ids]

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

    def parents(self, run_id: str) -> list[str]:
        return list(json.loads(self._get_run(run_id).data.tags.get("nas.parents", "[]")))

    def weights(self, run_id: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        return load(self._require(self._get_run(run_id), WEIGHTS_FILE, (
            ": it failed or was logged without weights. Pick a finished ok run from `nas runs`.")))

    def checkpoint(self, run_id: str, required: bool = True) -> dict[str, Any] | None:
        """The state a run left to be continued (a shorter trial: see nas.train.TrainOutcome.checkpoint;
        a meta-training: nas.learned_opt.meta_train); None if it has none and it is not `required`."""
        import io

        import torch

        run = self._get_run(run_id)
        data = self._require(run, CHECKPOINT_FILE, (
            ": only a run stopped before the end of its learning-rate schedule keeps one. Promote a lower rung "
            "of the same search.")) if required else self._read(run, CHECKPOINT_FILE)
        if data is None:
            return None
        # weights_only: tensors and plain containers, never arbitrary pickled code.
        return torch.load(io.BytesIO(data), weights_only=True)

    def learned_optimizer(self, run_id: str) -> bytes:
        """The LSTM optimiser that `nas meta-train` logged as run `run_id` (see nas.learned_opt.from_bytes)."""
        try:
            run = self._get_run(run_id)
        except LineageError as error:
            raise LineageError(f"optimizer 'learned:{run_id}' names no run of the store at {self.tracking_uri} "
                               f"({error}); train one with `nas meta-train` and use the run id it prints.") from None
        return self._require(run, LEARNED_OPTIMIZER_FILE, (
            ", so it is not a learned optimiser; use the run id that `nas meta-train` printed."))

    def finished_run_of(self, kind: str, key: str) -> str | None:
        """The finished run of this kind tagged `nas.run_key` = key (a repeated job's result), if any."""
        runs = self._search(f"tags.`nas.kind` = '{kind}' and tags.`nas.run_key` = '{key}' and "
                            "attributes.status = 'FINISHED'", max_results=1)
        return runs[0].info.run_id if runs else None

    def fetch_data(self, fingerprint: str, into: Path) -> Path:
        """The prepared data folder of this fingerprint (`share_data`), downloaded once to `into`/fingerprint."""
        folder = into / fingerprint
        if (folder / "meta.json").is_file():
            return folder
        run_id = self.finished_run_of(KIND_DATA, fingerprint)
        if run_id is None:
            raise LineageError(f"the store at {self.tracking_uri} holds no prepared data {fingerprint} and this "
                               "worker has no copy; a search with --cluster shares its data before any trial starts, "
                               "so run the search again (it resumes).")
        into.mkdir(parents=True, exist_ok=True)
        partial, run = Path(tempfile.mkdtemp(prefix=f"{fingerprint}-", dir=into)), self._get_run(run_id)
        for name in PREPARED_FILES:  # named here, not by the store
            (partial / name).write_bytes(self._require(run, f"{DATA_FOLDER}/{name}", ""))
        with contextlib.suppress(OSError):  # another worker's copy landed first: the same files
            partial.rename(folder)
        shutil.rmtree(partial, ignore_errors=True)
        return folder

    def best(self, k: int) -> list[Evaluation]:
        """The k best successful trials of the experiment, whatever strategy produced them."""
        return [self._evaluation(run) for run in self._best_runs(k)]

    def _best_runs(self, k: int) -> list[Run]:
        # ties: the lower validation loss (runs without one last), then the earlier run
        ids = self.sorted_run_ids({"nas.kind": KIND_TRIAL, "nas.status": TrialStatus.OK.value},
                                  ("val_acc", "val_loss"), k)
        if ids is not None:
            runs = {run.info.run_id: run for run in self._search(
                "attributes.run_id IN (" + ", ".join(f"'{i}'" for i in ids) + ")")} if ids else {}
            return [runs[i] for i in ids if i in runs]
        # Through a tracking server MLflow sorts every matching run (14 s at 10,000 on SQLite). Ask
        # for the runs above a high bar first and lower it until k come back: the top k all clear
        # the first bar that k runs clear, so the answer is MLflow's full sort, from a few runs.
        query = (f"tags.`nas.kind` = '{KIND_TRIAL}' and tags.`nas.status` = '{TrialStatus.OK.value}' "
                 "and attributes.status = 'FINISHED'")
        order = list(LEADERBOARD_ORDER)
        for bar in VAL_ACC_BARS:
            runs = self._search(f"{query} and metrics.val_acc >= {bar}", order_by=order, max_results=k)
            if len(runs) == k:
                return runs
        return self._search(query, order_by=order, max_results=k)

    def leaderboard(self, limit: int = 20) -> list[dict[str, Any]]:
        """Best finished candidates by validation accuracy, from the runs' data (no artifact reads).

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
                "flow_run": tags.get("prefect.flow_run_id"),
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

    # -- artifacts ---------------------------------------------------------------------

    def _evaluation(self, run: Run) -> Evaluation:
        return Evaluation.from_json(json.loads(self._require(
            run, EVALUATION_FILE, ", so this finished trial was not written by this tool: delete it in `nas ui`.")))

    def read_bytes(self, run_id: str, artifact: str) -> bytes | None:
        """One artifact of a run ("folder/file"), or None if it has none (e.g. a strategy's file)."""
        return self._read(self._get_run(run_id), artifact)

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
        folder = artifact.rpartition("/")[0] or None
        if artifact not in {f.path for f in self._reader().list_artifacts(run.info.run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory(prefix="nas-lineage-") as folder:
            return Path(self._reader().download_artifacts(run.info.run_id, artifact, dst_path=folder)).read_bytes()

    def _artifact_paths(self, run_id: str, path: str | None = None) -> Iterator[str]:
        for info in self._reader().list_artifacts(run_id, path):
            if info.is_dir:
                yield from self._artifact_paths(run_id, info.path)
            else:
                yield info.path
