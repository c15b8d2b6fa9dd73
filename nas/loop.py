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
  candidate order. A strategy whose proposals do not depend on results (`adaptive` False:
  random, grid) is asked ahead instead: a worker that finishes takes the next candidate at
  once, and results are still told in ask order, so the search is the same without
  waiting for the slowest trial of every round (`make run`'s search: 77 s instead of 110).
- asynchronous: each finished trial is told at once and its worker gets the next
  candidate. No worker waits for the slowest of a round, but the order (and so the
  search) depends on timing.

A seed fixes the strategy, but what it proposes also depends on the results it has heard
when it is asked. So the loop keeps a `Schedule`: for each result told, the number of its
ask, and the concurrency in effect. Given the schedule of an earlier run of the same search
(a rerun, or a resume after a kill), the loop asks as many at once as that run did, whatever
its own concurrency, and tells results in that order, holding a cache hit until the one
told before it is back. So the strategy makes the same proposals and every finished trial
is a cache hit again. Past the schedule's end (or, asynchronously, where the search no
longer asks what it names) the loop goes on at its own concurrency, as results finish.

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

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, replace

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
class Schedule:
    """What a rerun repeats to ask what an earlier run asked: for each result told, the number
    of its ask (`order`), and the concurrency in effect from each count of results told on
    (`limits`, [told, concurrency] pairs). Plain lists, so that it keeps as JSON."""

    order: list[int] = field(default_factory=list)
    limits: list[list[int]] = field(default_factory=list)

    def concurrency(self, told: int, wanted: int) -> int:
        """Trials at once after `told` results: the earlier run's while replaying it, else `wanted` (recorded)."""
        if told < len(self.order):
            return next((limit for start, limit in reversed(self.limits) if start <= told), wanted)
        if not self.limits or self.limits[-1][1] != wanted:
            self.limits.append([told, wanted])
        return wanted


def schedules_from_json(data: bytes | None) -> list[Schedule]:
    """The schedules a run keeps (one per loop it ran, in order), from `schedules_to_json`'s bytes or None."""
    return [Schedule(**s) for s in json.loads(data)] if data else []


def schedules_to_json(schedules: list[Schedule]) -> bytes:
    return json.dumps([asdict(s) for s in schedules]).encode()


@dataclass
class LoopOutcome:
    evaluations: list[Evaluation]  # in the order told
    stop_reason: str


def run_loop(strategy: Strategy, submit: Submit, *, trials: int, concurrency: int = 1,
             asynchronous: bool = False, stop: StopRule | None = None,
             on_result: Callable[[Evaluation], None] | None = None,
             submit_group: SubmitGroup | None = None, schedule: Schedule | None = None) -> LoopOutcome:
    """Ask, run and tell until `trials` results are told, the strategy is done, or `stop`
    (asked before every ask) gives a reason; trials already running then still finish and are told.
    `schedule` (see above) is replayed and extended in place, before `on_result`."""
    if trials < 1 or concurrency < 1:
        raise ValueError(f"trials={trials} and concurrency={concurrency} must both be at least 1.")
    group = submit_group or (lambda candidates: [submit(c) for c in candidates])
    loop = _Loop(strategy, submit, group, trials, stop or (lambda: None), on_result or (lambda e: None),
                 schedule or Schedule())
    if asynchronous:
        loop.run_async(concurrency)
    elif not strategy.adaptive and submit_group is None:  # a group runner trains whole rounds
        loop.run_ahead(concurrency)
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
    schedule: Schedule

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

    def _tell(self, pairs: list[tuple[int, Candidate, Future[Evaluation]]]) -> None:
        """Tell results, given with the numbers of their asks (recorded past the schedule's end)."""
        results = [_result(candidate, future) for _, candidate, future in pairs]
        self.strategy.tell(results)
        order = self.schedule.order
        for (number, _, _), result in zip(pairs, results):
            if len(self.told) == len(order):
                order.append(number)
            self.told.append(result)
            self.on_result(result)

    def run_batches(self, concurrency: int) -> None:
        while len(self.told) < self.trials:
            batch = self._ask(min(self.schedule.concurrency(len(self.told), concurrency), self.trials - len(self.told)))
            if self.stop_reason:
                return
            if not batch:  # everything asked has been told, so there is nothing to wait for
                raise ProtocolError(f"{self.strategy.name} says WAIT with no result pending.")
            first = self.asked - len(batch) + 1
            self._tell(list(zip(range(first, self.asked + 1), batch, self.submit_group(batch), strict=True)))

    def run_ahead(self, concurrency: int) -> None:
        """`concurrency` trials always running; results told in ask order (for strategies that do not learn)."""
        running: deque[tuple[int, Candidate, Future[Evaluation]]] = deque()  # in ask order
        while True:
            while (not self.stop_reason and self.asked < self.trials
                   and sum(not future.done() for _, _, future in running) < concurrency):
                more = self._ask(1)
                if not more:
                    break
                running.append((self.asked, more[0], self.submit(more[0])))
            if not running:
                if not self.stop_reason and self.asked < self.trials:
                    raise ProtocolError(f"{self.strategy.name} says WAIT with no result pending.")
                return
            if running[0][2].done():
                self._tell([running.popleft()])
            else:
                wait([future for _, _, future in running if not future.done()], return_when=FIRST_COMPLETED)

    def run_async(self, concurrency: int) -> None:
        running: dict[Future[Evaluation], tuple[int, Candidate]] = {}  # with the number of its ask
        while True:
            while (not self.stop_reason and self.asked < self.trials
                   and len(running) < self.schedule.concurrency(len(self.told), concurrency)):
                more = self._ask(1)
                if not more:
                    break  # WAIT: a result must come back first (or stop_reason is set)
                running[self.submit(more[0])] = (self.asked, more[0])
            if not running:
                if not self.stop_reason and self.asked < self.trials:
                    raise ProtocolError(f"{self.strategy.name} says WAIT with no result pending.")
                return
            future = self._next(running)
            # One result, then the loop refills: each tell is followed by the same asks on a replay.
            self._tell([(*running.pop(future), future)])

    def _next(self, running: dict[Future[Evaluation], tuple[int, Candidate]]) -> Future[Evaluation]:
        """The result to tell next: the one the schedule names while replaying, else the first
        finished (of several, the earliest asked)."""
        order = self.schedule.order
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


__all__ = ["LoopOutcome", "Schedule", "StopRule", "Submit", "SubmitGroup", "run_loop", "schedules_from_json",
           "schedules_to_json", "time_limit"]
