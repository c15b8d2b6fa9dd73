"""The default job as a user runs it: `nas prepare` then `nas search` with params.yaml,
in a fresh folder (empty MLflow store, empty Prefect cache), then the same search again.

    python bench/default_run.py

Targets (issues 2 and 4): the search finishes well inside `make run`'s 5 minutes (add
about 2 minutes for a cold install of .venv) and its best network reaches >= 99.0% test
accuracy on digits; the repeated command costs a small fraction of the first.
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
        nas("prepare")
        nas("search")
    summary = json.loads((folder / "metrics/search.json").read_text())
    with stopwatch(times, "repeat"):
        nas("prepare")
        nas("search")
    print(f"nas prepare + nas search (params.yaml defaults): {times['first']:.1f} s for {summary['trials']} trials")
    print(f"best test accuracy: {summary['best_test_acc']:.4f} (val {summary['best_val_acc']:.4f}, "
          f"{summary['best_params']:,} parameters; target >= 0.990)")
    print(f"same commands again: {times['repeat']:.1f} s = {times['repeat'] / times['first']:.3f} of the first "
          "(includes starting Python, imports and Prefect's temporary server)")


if __name__ == "__main__":
    main()
