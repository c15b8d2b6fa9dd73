"""Trials on Dask workers: how many a cluster trains at once, and which GPU a worker trains on.

A worker with GPUs declares them as a Dask resource (`dask worker ADDR --resources GPU=1`,
with `CUDA_VISIBLE_DEVICES` naming its device), and every trial then asks for one unit of
it (flows.dask_runner.TrialDaskRunner): one trial per GPU at a time, however many threads the
worker has. Workers that declare none train one trial per thread.
"""

from __future__ import annotations

import sys
from typing import Any

GPU = "GPU"


def declared_gpus(client: Any) -> int:
    """The GPUs the workers of a distributed.Client's cluster declare as resources (0: none)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return int(sum(w.get("resources", {}).get(GPU, 0) for w in workers))


def trial_slots(client: Any) -> int:
    """How many trials the cluster trains at once: its declared GPUs, else its worker threads."""
    return declared_gpus(client) or sum(client.nthreads().values())


def pin_local_worker_gpu() -> None:
    """In a worker of a local cluster (`--workers N`, named 0..N-1), train on GPU number name mod
    the GPU count, so the workers spread over the machine's GPUs; elsewhere, leave CUDA's default."""
    if "distributed" not in sys.modules:  # not a Dask worker, which has it loaded; and no import for threads
        return
    import torch
    from distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:  # not in a Dask worker
        return
    if isinstance(name, int) and torch.cuda.is_available():
        torch.cuda.set_device(name % torch.cuda.device_count())
