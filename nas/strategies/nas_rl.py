"""The NAS controller (Zoph and Le 2017): an LSTM writes sentences, REINFORCE teaches it.

A two-layer LSTM (35 units each, every weight uniform in +-0.08) writes a sentence of
the space one decision at a time (`nas.space.grammar`): at each step it reads the token
it chose last, and a softmax over the vocabulary, masked to the tokens the grammar allows
there, picks the next. So every sentence is a valid network of whatever space file the
user gives. Skip connections use the paper's anchor attention: when conv layer i opens,
each earlier layer j joins its input with probability sigmoid(v . tanh(W_prev h_j +
W_curr h_i)), where h_j is the controller's state when layer j opened.

Each network's reward is the cube of its best validation accuracy over its last five
epochs (0 for a network that failed to train). After every `children` results (the
search's concurrency, the paper's m), one Adam step follows the REINFORCE
gradient: the mean of (reward - baseline) x the sentence's log-probability, with an
exponential moving average of earlier rewards as the baseline. The controller's version
counts its updates; every candidate notes the version that wrote it and its
log-probability, and `files()` hands the weights (safetensors) to the search run.

A sentence already proposed is not trained twice: if its reward is known it counts again
as a sample of the current policy, as the paper's controller would have been paid the
same. A warm start replays other searches' networks the grammar can write, as if the
controller had written them. Learning is deterministic given the seed and the results
told, so a rerun replays the updates and proposes the same networks.

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/small-cnn.yaml").bind((1, 8, 8), 10)
    >>> search = NasRL(space, Budget(epochs=5), seed=0, children=2)
    >>> first = search.ask(2)
    >>> [c.info["controller_version"] for c in first]
    [0, 0]
    >>> search.tell([Evaluation(c, str(i), val_accs=[0.5, 0.6 + i / 10]) for i, c in enumerate(first)])
    >>> search.version, round(search.baseline, 4)
    (1, 0.2797)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from nas.space import SearchSpace
from nas.space.grammar import YES, Decision, Episode, GrammarError, picks_for, write
from nas.space.shapes import CONV_OPS
from nas.strategies.base import Strategy, proposal_key
from nas.trial import Budget, Candidate, Evaluation, TrialStatus

HIDDEN = 35  # units per LSTM layer
INIT_RANGE = 0.08
PAPER_LEARNING_RATE = 6e-4
# The paper's controller took 12,800 / 8 = 1,600 Adam steps at 6e-4: about 1 in learning rate x steps.
PAPER_STEP_SUM = PAPER_LEARNING_RATE * 12_800 / 8
# Above this REINFORCE's steps collapse the policy onto a few sentences before it has explored: at 0.02 a
# controller paid for one choice wrote nothing new after 28-68 networks in 3 of 6 seeds (the learning test of
# tests/nas/test_nas_rl.py); at 0.05 and 0.1 nas-rl fell behind random search on the tabular benchmark.
MAX_LEARNING_RATE = 0.01
DEFAULT_TRIALS = 100  # what a search that does not say how many it will train is assumed to
BASELINE_DECAY = 0.95
LAST_EPOCHS = 5  # the reward is the best validation accuracy of these, cubed
DEFAULT_CHILDREN = 2
MAX_REDRAWS = 200  # sentences in a row that repeat earlier proposals before the search is done
START = "<start>"


def learning_rate_for(trials: int, children: int) -> float:
    """Adam's learning rate for a search of `trials` networks, `children` per update: the paper's
    learning rate x steps spread over the updates this search makes, between the paper's 6e-4
    and MAX_LEARNING_RATE.

    At the paper's 6e-4 a controller updated 50 times (100 trials, 2 per update) barely moves
    (no decision's probability by 0.5 % in bench/rnn_cells.py's setting); at 100 trials and 2
    children the rule gives 0.019, capped at 0.01.
    """
    return min(MAX_LEARNING_RATE, max(PAPER_LEARNING_RATE, PAPER_STEP_SUM * children / max(trials, 1)))


def reward(evaluation: Evaluation) -> float:
    """The paper's reward: (max validation accuracy of the last 5 epochs) cubed; 0 if it failed."""
    if not evaluation.ok:
        return 0.0
    curve = evaluation.val_accs[-LAST_EPOCHS:] or [evaluation.val_acc or 0.0]
    return max(curve) ** 3


class Controller(nn.Module):
    """The LSTM that writes sentences, with the anchor attention for skip connections."""

    def __init__(self, vocabulary: list[str], seed: int) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.index = {token: i for i, token in enumerate([*vocabulary, START])}
        self.embed = nn.Embedding(len(self.index), HIDDEN)
        self.cells = nn.ModuleList([nn.LSTMCell(HIDDEN, HIDDEN), nn.LSTMCell(HIDDEN, HIDDEN)])
        self.out = nn.Linear(HIDDEN, len(vocabulary))
        self.w_prev = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.w_curr = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.v = nn.Linear(HIDDEN, 1, bias=False)
        generator = torch.Generator().manual_seed(seed)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -INIT_RANGE, INIT_RANGE, generator=generator)

    def walk(self) -> _Walk:
        return _Walk(self)

    def log_prob(self, episode: Episode) -> torch.Tensor:
        """The log-probability of writing an episode's picks (with gradients)."""
        walk, total = self.walk(), torch.zeros(())
        for decision, pick in episode:
            total = total + walk.log_probs(decision)[decision.options.index(pick)]
            walk.advance(decision, pick)
        return total


class _Walk:
    """The controller's state while it writes one sentence."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.state = [(torch.zeros(1, HIDDEN), torch.zeros(1, HIDDEN)) for _ in controller.cells]
        self._read(START)
        self.anchors = [self.hidden]  # the stem's anchor, then each conv layer's as it opens

    @property
    def hidden(self) -> torch.Tensor:
        return self.state[-1][0]

    def _read(self, token: str) -> None:
        x = self.controller.embed(torch.tensor([self.controller.index[token]]))
        for i, cell in enumerate(self.controller.cells):
            self.state[i] = cell(x, self.state[i])
            x = self.state[i][0]

    def log_probs(self, decision: Decision) -> torch.Tensor:
        """Log-probabilities of the decision's options, in order."""
        c = self.controller
        if decision.what == "anchor":
            logit = c.v(torch.tanh(c.w_prev(self.anchors[decision.earlier]) + c.w_curr(self.anchors[decision.layer])))
            p_yes = torch.nn.functional.logsigmoid(logit).reshape(())
            p_no = torch.nn.functional.logsigmoid(-logit).reshape(())
            return torch.stack([p_yes if option == YES else p_no for option in decision.options])
        ids = torch.tensor([c.index[o] for o in decision.options])
        return torch.log_softmax(c.out(self.hidden)[0, ids], dim=0)

    def advance(self, decision: Decision, pick: str) -> None:
        if decision.what == "anchor":
            return  # anchors are not tokens: the LSTM reads only what it writes
        self._read(pick)
        if pick in CONV_OPS:  # a conv layer opens here
            self.anchors.append(self.hidden)


class NasRL(Strategy):
    """An LSTM controller trained with REINFORCE writes the space's sentences.

    `children` is the paper's m, the results per controller update (default: the search's
    concurrency). `learning_rate` is Adam's; by default `learning_rate_for(trials, children)`,
    so that the controller learns within the `trials` the search trains (default 100). The
    paper's 6e-4 is that rule's value at the paper's 12,800 networks.
    `report()` shows the version, baseline and the latest rewards.
    """

    name = "nas-rl"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, children: int | None = None,
                 learning_rate: float | None = None, trials: int | None = None) -> None:
        super().__init__(space, budget, seed=seed)
        if children is not None and children < 1:
            raise ValueError(f"children={children} must be at least 1.")
        if trials is not None and trials < 1:
            raise ValueError(f"trials={trials} must be at least 1.")
        self.children = children or DEFAULT_CHILDREN
        self.learning_rate = learning_rate or learning_rate_for(trials or DEFAULT_TRIALS, self.children)
        self.controller = Controller(space.vocabulary(), seed)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.learning_rate)
        self.version = 0  # controller updates so far
        self.baseline: float | None = None
        self.episodes: dict[str, Episode] = {}  # proposal key -> how the controller wrote it
        self.rewards: dict[str, float] = {}  # proposal key -> reward, for sentences written again
        self.batch: list[tuple[Episode, float]] = []  # samples waiting for the next update
        self.updates: list[dict[str, float]] = []  # per update: mean reward, baseline, loss

    def _sample(self) -> tuple[list[str], Episode, float]:
        walk = self.controller.walk()
        log_prob = 0.0

        def choose(decision: Decision) -> str:
            nonlocal log_prob
            probs = walk.log_probs(decision).exp().tolist()
            pick = self.rng.choices(range(len(probs)), weights=probs)[0]
            log_prob += math.log(probs[pick])
            walk.advance(decision, decision.options[pick])
            return decision.options[pick]

        with torch.no_grad():
            tokens, episode = write(self.space, choose)
        return tokens, episode, log_prob

    def _propose(self, n: int) -> list[Candidate]:
        candidates: list[Candidate] = []
        redraws = 0
        while len(candidates) < n and redraws < MAX_REDRAWS:
            tokens, episode, log_prob = self._sample()
            arch, hparams = self.space.from_tokens(tokens)
            key = proposal_key(arch, hparams)
            if self._fresh(arch, hparams):
                self.episodes[key] = episode
                candidates.append(self._candidate(arch, hparams, info={
                    "controller_version": self.version, "log_prob": round(log_prob, 4)}))
                redraws = 0
                continue
            redraws += 1
            if key in self.rewards:  # trained before: paid again, as a sample of this policy
                self._add_sample(episode, self.rewards[key])
        if not candidates and not self.pending:
            self._finish(f"the controller wrote {MAX_REDRAWS} sentences in a row that were proposed before")
        return candidates

    def _learn(self, evaluations: list[Evaluation]) -> None:
        super()._learn(evaluations)
        for evaluation in evaluations:
            candidate = evaluation.candidate
            key = proposal_key(candidate.arch, candidate.hparams)
            episode = self.episodes.pop(key, None)
            if evaluation.status == TrialStatus.ERROR:
                continue  # the environment failed, not the network: nothing to learn
            episode = episode or self._episode_of(candidate)
            if episode is None:
                continue  # another method's network that the grammar cannot write
            self.rewards[key] = reward(evaluation)
            self._add_sample(episode, self.rewards[key])

    def _episode_of(self, candidate: Candidate) -> Episode | None:
        """How the controller would have written another method's network (its continuous
        hyper-parameters at their nearest grid points), or None if the grammar cannot."""
        tokens = self.space.to_tokens(candidate.arch, self.space.nearest_hparams(candidate.hparams))
        picks = picks_for(self.space, tokens)
        if picks is None:
            return None
        try:
            return write(self.space, follow=picks)[1]
        except GrammarError:  # a network the masks would not have let through
            return None

    def _add_sample(self, episode: Episode, value: float) -> None:
        self.batch.append((episode, value))
        if len(self.batch) >= self.children:
            self._update()

    def _update(self) -> None:
        """One REINFORCE step over the batch, against the moving-average baseline."""
        values = [value for _, value in self.batch]
        if self.baseline is None:
            self.baseline = sum(values) / len(values)
        advantages = []
        for value in values:
            advantages.append(value - self.baseline)
            self.baseline = BASELINE_DECAY * self.baseline + (1 - BASELINE_DECAY) * value
        loss = -sum(a * self.controller.log_prob(episode)
                    for a, (episode, _) in zip(advantages, self.batch)) / len(self.batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.version += 1
        self.updates.append({"mean_reward": sum(values) / len(values), "baseline": self.baseline,
                             "loss": loss.item()})
        self.batch = []

    # ---- what the search run shows -------------------------------------------------

    def report(self) -> dict[str, Any]:
        return {"version": self.version, "children": self.children, "baseline": self.baseline,
                "waiting_for_update": len(self.batch), "updates": self.updates[-100:]}

    def files(self) -> dict[str, bytes]:
        """The controller's weights now, named by version."""
        return {f"controller/v{self.version:04d}.safetensors": save_tensors(
            {k: v.contiguous() for k, v in self.controller.state_dict().items()})}

    def state_dict(self) -> dict[str, Any]:
        def episode_json(episode: Episode) -> list:
            return [[d.what, list(d.options), d.layer, d.earlier, pick] for d, pick in episode]

        return {**super().state_dict(), "children": self.children, "version": self.version,
                "baseline": self.baseline, "rewards": self.rewards, "updates": self.updates,
                "episodes": {k: episode_json(e) for k, e in self.episodes.items()},
                "batch": [[episode_json(e), value] for e, value in self.batch],
                "controller": save_tensors(self.controller.state_dict()).hex(),
                "optimizer": _optimizer_json(self.optimizer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def episode(data: list) -> Episode:
            return [(Decision(what, tuple(options), layer, earlier), pick)
                    for what, options, layer, earlier, pick in data]

        super().load_state_dict(state)
        self.children, self.version, self.baseline = state["children"], state["version"], state["baseline"]
        self.rewards, self.updates = dict(state["rewards"]), list(state["updates"])
        self.episodes = {k: episode(e) for k, e in state["episodes"].items()}
        self.batch = [(episode(e), value) for e, value in state["batch"]]
        self.controller.load_state_dict(load_tensors(bytes.fromhex(state["controller"])))
        self.optimizer.load_state_dict(_optimizer_from_json(state["optimizer"]))


def _optimizer_json(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = optimizer.state_dict()
    return {"param_groups": state["param_groups"],
            "state": {str(i): {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in s.items()}
                      for i, s in state["state"].items()}}


def _optimizer_from_json(data: dict[str, Any]) -> dict[str, Any]:
    return {"param_groups": data["param_groups"],
            "state": {int(i): {k: torch.tensor(v) for k, v in s.items()} for i, s in data["state"].items()}}


__all__ = ["Controller", "NasRL", "learning_rate_for", "reward"]
