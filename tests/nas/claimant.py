"""One claimant of trials, as a process of its own, reaching the store the way a tracking server
is reached (no file lock): `python -m tests.nas.claimant DB FOLDER INDEX`.

For each case of CLAIM_CASES it says it is ready (FOLDER/ready.<case>.<index>), waits for
FOLDER/go.<case> so that claimants start together, then starts the case's search and claims its
trial with its writes delayed by its DELAY seconds after it decided and its clock SKEW seconds
off; it "trains" (a second) and finishes. It prints a JSON line per case: its search run and
whether it trained.
"""

import json
import sys
import time
from pathlib import Path

from tests.nas.test_lineage import CLAIM_CASES, DATA_FP, candidate, evaluation


def main(database: str, folder: Path, index: int) -> None:
    skew = 0.0
    real_time = time.time
    time.time = lambda: real_time() + skew  # MLflow stamps start times with it, heartbeats too

    from nas.lineage import LineageStore

    for case, (delays, skews) in enumerate(CLAIM_CASES.values()):
        store = LineageStore(f"sqlite:///{database}", f"claims{case}")
        store.ensure()
        store.artifact_dir = None  # as through a tracking server: no file lock spans the processes
        create_run = store.client.create_run

        def slow_create_run(*args, delay=delays[index], create_run=create_run, **kwargs):
            time.sleep(delay)  # decided (looked and found nothing), not yet written
            return create_run(*args, **kwargs)

        store.client.create_run = slow_create_run
        skew = skews[index]
        (folder / f"ready.{case}.{index}").touch()
        while not (folder / f"go.{case}").exists():
            time.sleep(0.01)
        search = store.start_search({"strategy": "random", "trials": 1}, None, DATA_FP)
        cand = candidate(33)
        claim = store.claim_trial(cand, evaluation(cand).trial_key, parent_run_id=search, strategy="random",
                                  data_fingerprint=DATA_FP, poll_seconds=0.05)
        if claim.run_id is not None:
            time.sleep(1.0)
            store.finish_trial(claim.run_id, evaluation(cand))
        print(json.dumps({"search": search, "trained": claim.run_id is not None}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
