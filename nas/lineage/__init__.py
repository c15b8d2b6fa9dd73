"""The lineage store: every candidate of every search method is one MLflow run.

This is the only package of nas that knows MLflow. A search is a parent run; each
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

LineageStore is put together from one module per job: connection (the URI, the client and
the locks every write takes), runs (searches, claims and trial outcomes), queries (reads)
and models (servable models); layout names what a run holds.
"""

from nas.lineage.connection import (ARTIFACTS_DIR, DATABASE_FILE, DEFAULT_STORE_DIR, FIX_HINT, LOCK_FILE,
                                    MAX_CONFIG_PARAM_CHARS, MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH,
                                    MAX_TAG_CHARS, LineageError, resolve_tracking_uri)
from nas.lineage.layout import (ARCHITECTURE_FILE, CHECKPOINT_FILE, CONFIG_FILE, EVALUATION_FILE, KIND_DATA,
                                KIND_FINAL, KIND_LEARNED_OPTIMIZER, KIND_PREDICTOR, KIND_SEARCH, KIND_TRIAL,
                                LEARNED_OPTIMIZER_FILE, PREDICTOR_FILE, WEIGHTS_FILE)
from nas.lineage.models import CHAMPION, MODEL_NAME, StoreModels
from nas.lineage.runs import CLAIM_LEASE_SECONDS, HEARTBEAT_SECONDS, Claim, StoreRuns


class LineageStore(StoreRuns, StoreModels):
    """One MLflow experiment holding search runs and, nested under them, candidate runs.

    Safe to use from many threads, as one shared instance or one instance per task: it
    keeps no per-thread state, and a lock per tracking URI (see _store_lock) makes the
    first-time set-up and the database writes one thread at a time.
    """


__all__ = [
    "ARCHITECTURE_FILE", "ARTIFACTS_DIR", "CHECKPOINT_FILE", "CLAIM_LEASE_SECONDS", "CONFIG_FILE", "DATABASE_FILE",
    "DEFAULT_STORE_DIR", "EVALUATION_FILE", "FIX_HINT", "HEARTBEAT_SECONDS", "KIND_DATA", "KIND_FINAL",
    "KIND_LEARNED_OPTIMIZER", "KIND_PREDICTOR", "LEARNED_OPTIMIZER_FILE",
    "KIND_SEARCH", "KIND_TRIAL", "LOCK_FILE", "MAX_CONFIG_PARAM_CHARS", "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH", "PREDICTOR_FILE", "CHAMPION", "MAX_TAG_CHARS", "MODEL_NAME", "WEIGHTS_FILE", "Claim",
    "LineageError", "LineageStore", "resolve_tracking_uri",
]
