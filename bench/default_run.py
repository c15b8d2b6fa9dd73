"""The default job as `make run` runs it: `nas pipeline` with params.yaml in a fresh folder
(empty MLflow store, empty Prefect cache), then the same command again.

    python bench/default_run.py

Targets (issues 2 and 4): the pipeline finishes well inside `make run`'s 5 minutes (add
the install of .venv: about 1 minute with pip's cache warm, 2 cold) and the registered
model reaches >= 99.3% test accuracy on digits; the repeated command costs a small
fraction of the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_project, stopwatch  # noqa: E402


def nas(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nas.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main() -> None:
    folder = scratch_project("default")
    times: dict[str, float] = {}
    with stopwatch(times, "first"):
        nas("pipeline")
    search, final = (json.loads((folder / f"metrics/{name}.json").read_text()) for name in ("search", "final"))
    with stopwatch(times, "repeat"):
        nas("pipeline")
    print(f"nas pipeline (params.yaml defaults): {times['first']:.1f} s for {search['trials']} search trials, "
          "refinement, evaluation and registration")
    print(f"search's best: val {search['best_val_acc']:.4f}; registered model {final['registered_uri']}: test "
          f"{final['test_acc']:.4f} (target >= 0.993)")
    print(f"same command again: {times['repeat']:.1f} s = {times['repeat'] / times['first']:.3f} of the first "
          "(includes starting Python, imports and Prefect's temporary server)")


if __name__ == "__main__":
    main()
