"""The one ask -> run -> tell loop every search runs, whatever trains its trials.

The protocol (see `nas.strategies.base`): `ask(n)` returns candidates, or WAIT (results
are pending: tell them, then ask again), or DONE (never again, with a reason). `tell`
gets exactly the candidates `ask` returned, each once, in the order they were asked
within a round, with the result attached. A runner may answer from a cache or from the
lineage store with a result recorded for another search's candidate: the loop always
hands the strategy *its own* candidate with that result, so lineage notes (brackets,
generations, parents) are never another search's.

Two modes:

- batch (default): ask `concurrency` candidates, run them at once, tell all results in
  candidate order. A seed fixes the whole search, so a rerun replays it and every trial
  that finished before is a cache hit.
- asynchronous: each finished trial is told at once and its worker gets the next
  candidate. No worker waits for the slowest of a round, but the order (and so the
  search) depends on timing. So the loop keeps that order: `order` lists, for each
  result told, the number of its ask. Given the list of an earlier run of the same search
  (a rerun, or a resume after a kill), the loop tells results in that order, holding a
  cache hit until the one told before it is back, so the strategy makes the same
  proposals and every finished trial is a cache hit again; past the list's end (or where
  the search no longer asks what the list names) it tells them as they finish.

The runner is a function `submit(candidate) -> concurrent.futures.Future[Evaluation]`:
Prefect tasks in the flows, threads in `nas.runner`, a lookup table in a benchmark. In
batch mode a runner may also take a whole round at once (`submit_group(candidates) ->
futures`, in the same order), which lets it train candidates of one shape as one batched
network (`nas.batched`).
A runner that raises is a failure of the environment: the trial is told as an ERROR
result (a rerun trains it again) and the search goes on.

    >>> from concurrent.futures import Future
    >>> from nas.space import SearchSpace
    >>> from nas.strategies import RandomSearch
    >>> from nas.trial import Budget, Evaluation
    >>> def instant(candidate):  # a runner that "trains" in no time
    ...     future = Future()
    ...     future.set_result(Evaluation(candidate, "key", val_acc=0.5))
    ...     return future
    >>> space = SearchSpace.load("spaces/mlp.yaml").bind((20,), 3)
    >>> outcome = run_loop(RandomSearch(space, Budget(1)), instant, trials=5, concurrency=2)
    >>> len(outcome.evaluations), outcome.stop_reason
    (5, 'the trial budget of 5 is spent')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace

from nas.strategies.base import ProtocolError, Strategy
from nas.trial import Candidate, Evaluation, TrialStatus

log = logging.getLogger(__name__)

Submit = Callable[[Candidate], "Future[Evaluation]"]
SubmitGroup = Callable[[list[Candidate]], "list[Future[Evaluation]]"]
StopRule = Callable[[], "str | None"]  # a reason to stop asking, or None to go on


def time_limit(seconds: float) -> StopRule:
    """Stop asking once `seconds` have passed from now."""
    deadline = time.monotonic() + seconds
    return lambda: f"the time limit of {seconds:g} s is reached" if time.monotonic() >= deadline else None


@dataclass
class LoopOutcome:
    evaluations: list[Evaluation]  # in the order told
    stop_reason: str


def run_loop(strategy: Strategy, submit: Submit, *, trials: int, concurrency: int = 1,
             asynchronous: bool = False, stop: StopRule | None = None,
             on_result: Callable[[Evaluation], None] | None = None,
             submit_group: SubmitGroup | None = None, order: list[int] | None = None) -> LoopOutcome:
    """Ask, run and tell until `trials` results are told, the strategy is done, or `stop`
    (asked before every ask) gives a reason; trials already running then still finish and are told.
    In asynchronous mode `order` (see above) is replayed and extended in place, before `on_result`."""
    if trials < 1 or concurrency < 1:
        raise ValueError(f"trials={trials} and concurrency={concurrency} must both be at least 1.")
    group = submit_group or (lambda candidates: [submit(c) for c in candidates])
    loop = _Loop(strategy, submit, group, trials, stop or (lambda: None), on_result or (lambda e: None))
    if asynchronous:
        loop.run_async(concurrency, [] if order is None else order)
    else:
        loop.run_batches(concurrency)
    return LoopOutcome(loop.told, loop.stop_reason or f"the trial budget of {trials} is spent")


@dataclass
class _Loop:
    strategy: Strategy
    submit: Submit
    submit_group: SubmitGroup
    trials: int
    stop: StopRule
    on_result: Callable[[Evaluation], None]

    def __post_init__(self) -> None:
        self.told: list[Evaluation] = []
        self.asked = 0
        self.stop_reason: str | None = None

    def _ask(self, n: int) -> list[Candidate]:
        """Up to n candidates; none with `stop_reason` set means: stop asking."""
        self.stop_reason = self.stop()
        if self.stop_reason:
            return []
        asked = self.strategy.ask(n)
        if asked.done:
            self.stop_reason = f"{self.strategy.name} is done: {asked.reason}"
        self.asked += len(asked)
        return list(asked)

    def _tell(self, pairs: list[tuple[Candidate, Future[Evaluation]]]) -> None:
        results = [_result(candidate, future) for candidate, future in pairs]
        self.strategy.tell(results)
        for result in results:
            self.told.append(result)
            self.on_result(result)

    def run_batches(self, concurrency: int) -> None:
        while len(self.told) < self.trials:
            batch = self._ask(min(concurrency, self.trials - len(self.told)))
            if self.stop_reason:
                return
            if not batch:  # everything asked has been told, so there is nothing to wait for
                raise ProtocolError(f"{self.strategy.name} says WAIT with no result pending.")
            self._tell(list(zip(batch, self.submit_group(batch), strict=True)))

    def run_async(self, concurrency: int, order: list[int]) -> None:
        running: dict[Future[Evaluation], tuple[int, Candidate]] = {}  # with the number of its ask
        while True:
            while not self.stop_reason and len(running) < concurrency and self.asked < self.trials:
                more = self._ask(1)
                if not more:
                    break  # WAIT: a result must come back first (or stop_reason is set)
                running[self.submit(more[0])] = (self.asked, more[0])
            if not running:
                if not self.stop_reason and self.asked < self.trials:
                    raise ProtocolError(f"{self.strategy.name} says WAIT with no result pending.")
                return
            future = self._next(running, order)
            number, candidate = running.pop(future)
            if len(self.told) == len(order):
                order.append(number)
            # One result, then the loop refills: each tell is followed by the same asks on a replay.
            self._tell([(candidate, future)])

    def _next(self, running: dict[Future[Evaluation], tuple[int, Candidate]], order: list[int]) -> Future[Evaluation]:
        """The result to tell next: the one `order` names while replaying, else the first
        finished (of several, the earliest asked)."""
        if len(self.told) < len(order):
            wanted = [future for future, (number, _) in running.items() if number == order[len(self.told)]]
            if wanted:
                wait(wanted)
                return wanted[0]
            log.info("the search no longer asks what its earlier run told next: results are told as they finish")
            del order[len(self.told):]
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        return min(finished, key=lambda future: running[future][0])


def _result(candidate: Candidate, future: Future[Evaluation]) -> Evaluation:
    """The runner's result for `candidate`, as the strategy's own candidate."""
    try:
        evaluation = future.result()
    except Exception as error:  # the environment failed the trial, not the network
        log.warning("trial of %s failed to run: %s: %s", candidate.arch.arch_id, type(error).__name__, error)
        return Evaluation(candidate, trial_key="", status=TrialStatus.ERROR, reason=f"{type(error).__name__}: {error}")
    return replace(evaluation, candidate=candidate)


__all__ = ["LoopOutcome", "StopRule", "Submit", "SubmitGroup", "run_loop", "time_limit"]
