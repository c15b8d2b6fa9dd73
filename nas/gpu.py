"""Making a GPU earn its keep with small networks.

A small network leaves the GPU idle while Python launches its kernels one at a time: a
training step of a few hundred microseconds of GPU work costs milliseconds of launches.
Two things fix that, both used by `nas.train` on CUDA and neither on the CPU:

- Each trial runs on its own CUDA stream (`trial_stream`), so the trials of a search's
  threads run side by side on one device instead of queueing on the default stream; how
  many trials share a GPU comes from its free memory (`trials_per_gpu`).
- Once a trial has taken a few ordinary steps, its whole training step (gather the batch,
  forward, loss, backward, optimizer step) is captured as one CUDA graph and replayed
  (`GraphedStep`): one launch per step. A step that cannot be captured (an op without
  graph support) runs as before, after one warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator

import torch

log = logging.getLogger(__name__)

TRIAL_MEMORY = 1 << 30  # GPU memory set aside per concurrent trial: small networks, a graph pool, cuDNN workspace
# Trial threads per CPU core. Replays leave little Python work per step, but every thread still
# takes its turn at the GIL: on 16 cores and an H200, 16 threads trained 33,000 trials an hour
# and 32 threads 25,000 (bench/gpu_throughput.py).
THREADS_PER_CORE = 1
STREAMS = 32  # torch hands out streams from a pool of this many per device, round robin
WARMUP_STEPS = 3  # eager steps before capture: cuDNN picks its kernels, optimizer state is allocated

# Every capturable optimizer here also runs eagerly by design (warm-up, a short last batch).
warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")


def trials_per_gpu(device: torch.device | str = "cuda") -> int:
    """Trials to run at once on `device`: as many as its free memory holds, at most what the cores can feed."""
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(max(1, min(free // TRIAL_MEMORY, THREADS_PER_CORE * (os.cpu_count() or 1), STREAMS)))


def default_concurrency(device: str | None) -> int:
    """Trials at once when the user says nothing: two on a CPU, `trials_per_gpu` on a GPU."""
    if device == "cpu" or not torch.cuda.is_available():
        return 2
    return trials_per_gpu()


# One stream per thread, taken once: torch's streams come from a small pool, and two trials
# that shared one while one of them captures a graph would record each other's kernels.
_streams = threading.local()


def _thread_stream(device: torch.device) -> torch.cuda.Stream:
    index = torch.cuda.current_device() if device.index is None else device.index
    if not hasattr(_streams, "by_index"):
        _streams.by_index = {}
    if index not in _streams.by_index:
        _streams.by_index[index] = torch.cuda.Stream(index)
    return _streams.by_index[index]


@contextlib.contextmanager
def trial_stream(device: torch.device) -> Iterator[None]:
    """Run the block on this thread's own stream (CUDA only), and wait for it at the end."""
    if device.type != "cuda":
        yield
        return
    stream = _thread_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # data loaded on the default stream is ready
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


class GraphedStep:
    """`step(index)` replayed as one CUDA graph for full batches, eager otherwise.

    `step` must read its batch through `index` (a batch of row numbers) and return a
    tensor (the batch's summed loss); everything else it touches must stay at fixed
    addresses, as module parameters, optimizer state and a tensor learning rate do.
    Gradients are set to None before capture so that the graph allocates them itself and
    each replay overwrites them. A custom dropout generator is registered with the graph so
    every replay draws new masks.
    """

    def __init__(self, step: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: torch.device,
                 generators: list[torch.Generator]) -> None:
        self.step = step
        self.generators = generators
        self.index = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.eager_calls = 0
        self.broken = False

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if self.broken or len(index) != len(self.index):  # a short last batch: another shape, eager
            return self.step(index)
        if self.graph is None:
            if self.eager_calls < WARMUP_STEPS:
                self.eager_calls += 1
                return self.step(index)
            self._capture()
            if self.broken:
                return self.step(index)
        self.index.copy_(index)
        self.graph.replay()
        return self.loss

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            for generator in self.generators:
                graph.register_generator_state(generator)
            # thread_local: other trials' threads may allocate while this one captures.
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.loss = self.step(self.index)
            finally:
                graph.capture_end()
        except Exception as error:  # anything the graph cannot hold: this trial stays eager
            log.warning("training step not captured as a CUDA graph (%s: %s); it runs eagerly",
                        type(error).__name__, error)
            self.broken, self.loss = True, None
            return
        log.debug("training step captured as a CUDA graph (batches of %d)", len(self.index))
        self.graph = graph


__all__ = ["GraphedStep", "default_concurrency", "trial_stream", "trials_per_gpu"]
