"""How long the `nas` commands a user types most often take to answer, next to Python's own start-up.

`nas --help`, `nas search --help` and `nas runs` on an empty store must not import torch or
start a Prefect server; each is timed (best of --repeats, so a busy moment does not count) and
compared with the baseline `python -c "import mlflow"`, which `nas runs` cannot avoid.

    python bench/cli_latency.py [--repeats 3]

Target: each command answers within 3 s on this machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def best_time(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    nas = [sys.executable, "-m", "nas.cli"]
    baseline = best_time([sys.executable, "-c", "import mlflow"], repeats)
    print(f"baseline  python -c 'import mlflow'  {baseline:5.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        for label, args in [("nas --help", ["--help"]), ("nas search --help", ["search", "--help"]),
                            ("nas runs (empty store)", ["runs", "--tracking-uri", f"sqlite:///{folder}/m.db",
                                                        "--experiment", "none"])]:
            seconds = best_time(nas + args, repeats)
            verdict = "ok" if seconds < 3 else "OVER 3 s"
            print(f"{label:24s} {seconds:5.2f} s  {seconds / baseline:4.1f}x baseline  {verdict}")


if __name__ == "__main__":
    main()
