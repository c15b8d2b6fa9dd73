"""Torch's CPU threads: how many a trial gets, and setting them for one block of code.

OpenMP keeps its thread count per calling thread. A trial's worker thread sets its own; a
Prefect task may also run on its caller's thread, so a task sets the count only while it
runs (`using_threads`), or it would leave the caller (a notebook, a test) on one thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def torch_threads(concurrency: int) -> int:
    """Torch threads per trial worker.

    Trials share the cores, and each also needs one for Python-side work (Prefect, MLflow,
    batching); torch gets the rest. More threads than that only add contention.
    """
    return max(1, (os.cpu_count() or 1) // concurrency - 1)


@contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Torch on `threads` threads in this thread while the block runs, then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["torch_threads", "using_threads"]
