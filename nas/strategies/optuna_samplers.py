"""Optuna's samplers as strategies: TPE, random and NSGA-II, measured in the same harness.

Optuna (Akiba et al. 2019) is a hyper-parameter optimisation framework; its samplers
decide the next trial's parameters from the finished ones. TPE (Bergstra et al. 2011)
models the densities of good and bad parameters and samples where their ratio is
highest; the random sampler draws independently; NSGA-II (Deb et al. 2002) evolves a
population towards the Pareto front of several objectives, here the highest validation
accuracy and the fewest parameters. They are here as peers: they write sentences of the
same space files and run through the same loop, trial cache and lineage store as every
built-in method, so a comparison of methods compares methods, not harnesses.

Each candidate is one Optuna trial (`study.ask()`), defined by run: the trial writes a
sentence through the space's grammar (`nas.space.grammar.write`), every decision with
more than one option a `trial.suggest_categorical`. Optuna insists that a parameter name
keep its choices in every trial, but the grammar masks options by what came before (a
wide layer leaves fewer channels under max_params). So a parameter is named by the
decision's kind, which occurrence of that kind it is in the sentence, and a digest of the
options left: `units.1.<digest>` is the second dense layer's width with these widths
open, and where masks leave others it is another parameter. Counting occurrences of a
kind, not positions in the sentence, keeps `hp.lr` one parameter at any depth and the
second dense layer's width one parameter however many conv layers came before. A
candidate notes its trial's number in `info["optuna_trial"]`.

An OK result is told as its validation accuracy (NSGA-II: and log10 of its parameter
count); a failure, the network's or the environment's, as FAIL, which the samplers
ignore. A sentence written again (TPE's habit late in a search) is not trained twice: its
trial is told the known result (FAIL while it is still training) and the study asks
again, up to `MAX_REDRAWS` times, then a fresh random sample stands in. Other searches'
results (`warm_start`) and those stand-ins join the study as completed trials, their
parameters replayed from the sentence (`params_of`); networks the grammar cannot write
are remembered, never proposed, but not shown to the sampler.

The study lives in memory, its sampler seeded from the search's seed. Given the seed and
the results told in order it proposes the same candidates, so a rerun, whose loop tells
the cached results again, rebuilds it. Optuna is an optional dependency:
`pip install 'nas[optuna]'`.

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/mlp.yaml").bind((20,), 3)
    >>> search = OptunaTPE(space, Budget(epochs=5), seed=0)
    >>> first = search.ask(2)
    >>> [c.info["optuna_trial"] for c in first], space.is_valid(first[0].arch, first[0].hparams)
    ([0, 1], True)
    >>> search.tell([Evaluation(c, str(i), val_acc=0.5 + i / 10) for i, c in enumerate(first)])
    >>> [t.value for t in search.study.trials]
    [0.5, 0.6]
    >>> params = search.params_of(first[0])  # name -> (pick, choices), replayed from the sentence
    >>> list(params)[:2]  # the decision's kind, its occurrence, a digest of its options
    ['units.0.4fed7d', 'activation.0.fb6b68']
    >>> {name: pick for name, (pick, _) in params.items()} == search.study.trials[0].params
    True
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from nas.ids import derive_seed, digest
from nas.space import SearchSpace
from nas.space.grammar import Decision, picks_for, write
from nas.strategies.base import Strategy, proposal_key
from nas.trial import Budget, Candidate, Evaluation

if TYPE_CHECKING:
    from types import ModuleType

    from optuna.samplers import BaseSampler
    from optuna.trial import Trial

# Sentences in a row that repeat earlier proposals before a random sample stands in.
MAX_REDRAWS = 10
OPTUNA_MISSING = ("Optuna's samplers (optuna-tpe, optuna-random, optuna-nsga2) need the optional dependency "
                  "optuna, which is not installed here: run pip install 'nas[optuna]' (or pip install optuna) "
                  "in this environment, or choose a built-in --strategy.")


def import_optuna() -> ModuleType:
    """The optuna package, or ImportError saying how to install it."""
    try:
        import optuna
    except ImportError as error:
        raise ImportError(OPTUNA_MISSING) from error
    return optuna


def param_name(decision: Decision, occurrence: int) -> str:
    """The Optuna parameter of a decision: its kind, which of that kind it is in the
    sentence, and a digest of the options the masks left (one name, one set of choices)."""
    return f"{decision.what}.{occurrence}.{digest(list(decision.options), 6)}"


class _Names:
    """Names the decisions of one sentence in order; None for a decision with one option."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def __call__(self, decision: Decision) -> str | None:
        occurrence = self.seen[decision.what]
        self.seen[decision.what] += 1
        return param_name(decision, occurrence) if len(decision.options) > 1 else None


class OptunaStrategy(Strategy):
    """An Optuna sampler writing the space's sentences; subclasses choose the sampler.

    `study` is the in-memory Optuna study; `report()` counts its trials, the sentences
    written again (`redraws`), the random stand-ins (`fallbacks`) and the results that
    could not join the study (`skipped`: another space's networks).
    """

    directions: ClassVar[tuple[str, ...]] = ("maximize",)  # one per value `_values` returns

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0) -> None:
        super().__init__(space, budget, seed=seed)
        self._optuna = import_optuna()
        self._optuna.logging.set_verbosity(self._optuna.logging.WARNING)
        self._new_study()

    @abstractmethod
    def _sampler(self, seed: int) -> BaseSampler:
        """A fresh sampler seeded with `seed` (32 bits, as numpy wants)."""

    def _new_study(self) -> None:
        seed = derive_seed(self.seed, self.name) % 2**32
        self.study = self._optuna.create_study(sampler=self._sampler(seed), directions=list(self.directions))
        self._running: dict[str, int] = {}  # proposal key -> number of its trial, asked and not yet told
        self._results: dict[str, list[float] | None] = {}  # proposal key -> values told (None: failed)
        self.redraws = self.fallbacks = self.skipped = 0

    # ---- asking --------------------------------------------------------------------

    def _propose(self, n: int) -> list[Candidate]:
        candidates: list[Candidate] = []
        while len(candidates) < n and not self.done():
            candidate = self._ask_one()
            if candidate is None:
                break
            candidates.append(candidate)
        return candidates

    def _ask_one(self) -> Candidate | None:
        for _ in range(MAX_REDRAWS):
            trial = self.study.ask()
            tokens, _ = write(self.space, self._suggester(trial))
            arch, hparams = self.space.from_tokens(tokens)
            key = proposal_key(arch, hparams)
            if self._fresh(arch, hparams):
                self._running[key] = trial.number
                return self._candidate(arch, hparams, info={"optuna_trial": trial.number})
            # Not trained twice: a known result is told again (the sampler wrote it, and it scored
            # that); one still training is told FAIL, as its value is not known yet.
            self.redraws += 1
            self._tell_trial(trial.number, self._results.get(key))
        # The sampler keeps writing what it has: a random sample explores instead (and says
        # DONE when the space is exhausted). Its result joins the study when told.
        self.fallbacks += 1
        stand_in = self._sample_fresh(1, optuna_trial=None, fallback="random")
        return stand_in[0] if stand_in else None

    def _suggester(self, trial: Trial) -> Callable[[Decision], str]:
        """The grammar's `choose` for one trial: each decision with options is a categorical suggestion."""
        names = _Names()

        def choose(decision: Decision) -> str:
            name = names(decision)
            return decision.options[0] if name is None else trial.suggest_categorical(name, list(decision.options))

        return choose

    # ---- learning ------------------------------------------------------------------

    def _values(self, evaluation: Evaluation) -> list[float] | None:
        """What Optuna is told for a result, one value per direction; None: FAIL."""
        if not evaluation.ok or evaluation.val_acc is None or not math.isfinite(evaluation.val_acc):
            return None
        return [float(evaluation.val_acc)]

    def _learn(self, evaluations: list[Evaluation]) -> None:
        self._record(evaluations)
        for evaluation in evaluations:
            key = proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams)
            values = self._values(evaluation)
            self._results[key] = values
            number = self._running.pop(key, None)
            if number is not None:
                self._tell_trial(number, values)
            else:  # a random stand-in, or a result this study never asked (a loaded state)
                self._add_trial(evaluation.candidate, values)

    def warm_start(self, history: list[Evaluation]) -> None:
        """Earlier results join the study as completed trials; the trials asked stay open."""
        self._record(history)
        for evaluation in history:
            values = self._values(evaluation)
            self._results[proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams)] = values
            self._add_trial(evaluation.candidate, values)

    def _tell_trial(self, number: int, values: list[float] | None) -> None:
        if values is None:
            self.study.tell(number, state=self._optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(number, values)

    def _add_trial(self, candidate: Candidate, values: list[float] | None) -> None:
        if values is None:
            return  # a failed trial teaches the samplers nothing
        params = self.params_of(candidate)
        if params is None:
            self.skipped += 1
            return
        CategoricalDistribution = self._optuna.distributions.CategoricalDistribution
        distributions = {name: CategoricalDistribution(choices) for name, (_, choices) in params.items()}
        self.study.add_trial(self._optuna.trial.create_trial(
            values=values, params={name: pick for name, (pick, _) in params.items()},
            distributions=distributions))

    def params_of(self, candidate: Candidate) -> dict[str, tuple[str, list[str]]] | None:
        """The Optuna parameters that write this candidate's sentence, as name -> (pick,
        choices); None if the grammar cannot write it (another space's network). A log
        range's hyper-parameter is read at its nearest grid point, as the grammar writes it."""
        try:
            hparams = self.space.nearest_hparams(candidate.hparams)
            self.space.validate(candidate.arch, hparams)
            picks = picks_for(self.space, self.space.to_tokens(candidate.arch, hparams))
            if picks is None:
                return None
            _, episode = write(self.space, follow=picks)
        except ValueError:  # ArchitectureError, GrammarError, SpaceError: not a sentence of this space
            return None
        names = _Names()
        return {name: (pick, list(decision.options)) for decision, pick in episode
                if (name := names(decision)) is not None}

    # ---- state ---------------------------------------------------------------------

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The results told come back as completed trials of a new study: it learns from
        them, but its random stream starts over, so it goes on differently than the search
        that saved the state (a rerun of the loop, which tells them again, replays exactly)."""
        super().load_state_dict(state)
        self._new_study()
        for evaluation in self.history:
            values = self._values(evaluation)
            self._results[proposal_key(evaluation.candidate.arch, evaluation.candidate.hparams)] = values
            self._add_trial(evaluation.candidate, values)

    def report(self) -> dict[str, Any]:
        states = Counter(t.state.name.lower() for t in self.study.get_trials(deepcopy=False))
        return {"sampler": type(self.study.sampler).__name__, "trials": dict(sorted(states.items())),
                "redraws": self.redraws, "fallbacks": self.fallbacks, "skipped": self.skipped}


class OptunaTPE(OptunaStrategy):
    """Optuna's TPESampler with the installed version's defaults (Optuna 5: multivariate,
    with the constant liar for trials still training); `n_startup_trials` random ones first."""

    name = "optuna-tpe"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, n_startup_trials: int = 10) -> None:
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials={n_startup_trials} must be at least 0.")
        self.n_startup_trials = n_startup_trials
        super().__init__(space, budget, seed=seed)

    def _sampler(self, seed: int) -> BaseSampler:
        return self._optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)


class OptunaRandom(OptunaStrategy):
    """Optuna's RandomSampler: each decision drawn uniformly among the options the masks left."""

    name = "optuna-random"

    def _sampler(self, seed: int) -> BaseSampler:
        return self._optuna.samplers.RandomSampler(seed=seed)


class OptunaNSGA2(OptunaStrategy):
    """Optuna's NSGAIISampler on two objectives: validation accuracy up, log10(parameters)
    down. The first generation (`population_size` trials, Optuna's 50) is random. A result
    without a parameter count (a benchmark's table) is counted by the space's shape inference."""

    name = "optuna-nsga2"
    directions = ("maximize", "minimize")

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, population_size: int = 50) -> None:
        if population_size < 2:
            raise ValueError(f"population_size={population_size} must be at least 2 for NSGA-II.")
        self.population_size = population_size
        super().__init__(space, budget, seed=seed)

    def _sampler(self, seed: int) -> BaseSampler:
        return self._optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size)

    def _values(self, evaluation: Evaluation) -> list[float] | None:
        accuracy = super()._values(evaluation)
        if accuracy is None:
            return None
        params = evaluation.params
        if params <= 0:
            try:
                params = self.space.validate(evaluation.candidate.arch, evaluation.candidate.hparams).params
            except ValueError:  # another space's network: no count to trust
                return None
        return [*accuracy, math.log10(max(params, 1))]


__all__ = ["MAX_REDRAWS", "OPTUNA_MISSING", "OptunaNSGA2", "OptunaRandom", "OptunaStrategy", "OptunaTPE",
           "import_optuna", "param_name"]
