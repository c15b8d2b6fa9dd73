"""MetaQNN (Baker et al. 2017): Q-learning writes networks one layer at a time.

An agent walks a chain of layers: each state is a layer (type, depth, kernel, stride,
channels or units, and the representation size its output has), each action picks the
next layer or ends the network. A finished network is trained, and its validation
accuracy is the only reward, given at the end of the walk. A tabular Q-function learns
which layer to write next; an epsilon-greedy policy explores first and exploits later.

The paper's settings, kept here: learning rate 0.01, discount 1, every Q-value starts
at 0.5; the reward is the validation accuracy (a network that failed to train: 0); after
each network the agent replays 100 trajectories drawn with replacement from everything
it remembers, updating each from its end backwards (the paper's Algorithm 3);
epsilon is 1.0 for the first 1500 of 2700 networks, then 0.9, 0.8, 0.7 for 100 each and
0.6 ... 0.1 for 150 each. That schedule is scaled to `trials`, the number of networks the
search will propose; without it the horizon is DEFAULT_TRIALS = 100. A network drawn a
second time is not trained again: its known accuracy is replayed, as in the paper.

States and actions come from the bound space, not from the paper's CIFAR values:
convolutions use the space's channels, strides and kernel sizes (square on images,
kernel_h 1 on signals), pooling the layout's pool kinds and the ops' pool sizes, dense
layers the ops' units, and the reduction the layout's `reduce` choices. The rules are the
paper's: no pooling except right after a convolution (so never pool after pool), no
kernel wider than the representation, flatten (and so dense layers over a flattened map)
only once the representation is at most DENSE_SIZE = 8 wide, dense units never grow, and
the layout bounds the number of conv and dense layers; `max_nodes` and `max_params`
bound the rest, checked by shape inference on every prefix (with its cheapest ending)
before a layer is written. Ending a network is two steps: a reduction, then the head.
Attributes MetaQNN does not search (batch norm, activation, dropout) take one value:
relu where allowed, otherwise the domain's first. The training hyper-parameters are not
MetaQNN's subject either: one sample of the space's `hparams`, drawn from the seed,
trains every network, so equal networks are equal trials and the reward is the
architecture's alone. A recurrent cell (spaces/rnn-cell.yaml) is a reduction: the
action picks its units, and the walk then writes its tree one attribute at a time (each
node's combination and activation, the memory inject, where it joins and where c_t is
read), every decision a state of the Q-table keyed by the decision before it, as the paper
chains layers; a cell without memory (inject `none`) ends the tree there. Networks are
chains (no skips). Representation sizes are exact
(the paper bins them): halving by pools leaves only a few, and an exact size tells
whether a pool or a kernel still fits.

    >>> from nas.space import SearchSpace
    >>> from nas.trial import Budget, Evaluation
    >>> space = SearchSpace.load("spaces/small-cnn.yaml").bind((1, 8, 8), 10)
    >>> search = MetaQNN(space, Budget(epochs=5), seed=0, trials=10)
    >>> first = search.ask(2)
    >>> [c.info["epsilon"] for c in first], [c.arch.nodes[-1].op for c in first]
    ([1.0, 1.0], ['head', 'head'])
    >>> search.tell([Evaluation(c, str(i), val_acc=0.6 + i / 10) for i, c in enumerate(first)])
    >>> len(search.memory), search.report()["q"][0]["q"] > 0.5  # the better network's last step
    (2, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from nas.space import Architecture, ArchitectureError, HParams, Node, SearchSpace
from nas.space.cell import NODE_ATTRS, NONE
from nas.space.domain import Domain
from nas.space.shapes import CONV_OPS, Shape
from nas.strategies.base import Strategy, proposal_key
from nas.trial import Budget, Candidate, Evaluation, TrialStatus

ALPHA = 0.01  # learning rate
GAMMA = 1.0  # discount: only the final accuracy counts
Q_INIT = 0.5
REPLAY = 100  # trajectories replayed after each network
# Baker et al., CIFAR-10: (epsilon, networks trained at it); scaled to the trials of a search.
EPSILON_SCHEDULE = ((1.0, 1500), (0.9, 100), (0.8, 100), (0.7, 100), (0.6, 150), (0.5, 150), (0.4, 150),
                    (0.3, 150), (0.2, 150), (0.1, 150))
DEFAULT_TRIALS = 100
DENSE_SIZE = 8  # flatten only representations at most this wide: dense layers stay small
MAX_REDRAWS = 200  # walks in a row that repeat a network or end in a dead end before giving up
REPORT_ROWS = 300
HEAD = "head"
REDUCTIONS = ("global_pool", "flatten")


def epsilon_at(index: int, trials: int) -> float:
    """Epsilon for the network numbered `index` (from 0) of a search of `trials` networks."""
    total = sum(count for _, count in EPSILON_SCHEDULE)
    seen = 0
    for epsilon, count in EPSILON_SCHEDULE:
        seen += count
        if index < round(seen * trials / total):
            return epsilon
    return EPSILON_SCHEDULE[-1][0]


class State(NamedTuple):
    """A layer as the paper's state: what it is, how deep, how wide its output, what came before."""

    depth: int  # layers before it (the input is depth 0)
    layer: str  # the action that wrote it, or "input"
    size: int  # representation size: the output's largest spatial side; 0 once flat
    convs: int  # conv layers so far (the layout bounds them)
    dense: int  # dense layers so far, all in a row after the reduction

    @property
    def key(self) -> str:
        return f"#{self.depth} {self.layer} r={self.size or 'flat'} convs={self.convs} dense={self.dense}"


Step = tuple[State, str]  # a state and the action taken in it


def _fixed(domain: Domain, prefer: Any = None) -> Any:
    """The one value of an attribute MetaQNN does not search."""
    return prefer if prefer is not None and domain.contains(prefer) else domain.values()[0]


class MetaQNN(Strategy):
    """Tabular Q-learning over layer sequences with epsilon-greedy walks and experience replay.

    `trials` is the number of networks the search will propose, to which the epsilon
    schedule is scaled (default DEFAULT_TRIALS). `report()` shows epsilon and the Q-table.
    """

    name = "metaqnn"

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, trials: int | None = None) -> None:
        super().__init__(space, budget, seed=seed)
        if trials is not None and trials < 1:
            raise ValueError(f"trials={trials} must be at least 1.")
        self.trials = trials or DEFAULT_TRIALS
        # One fixed training recipe for every network, as in the paper: HParams' defaults where the space
        # allows them, else each domain's first value. A random draw would let a bad learning rate sink the
        # Q-values of every architecture; the recipe is tuned afterwards (refinement, or --optimizer).
        defaults = HParams()
        self.hparams = HParams(**{name: _fixed(domain, getattr(defaults, name))
                                  for name, domain in space.hparams.items()})
        self.q: dict[str, dict[str, float]] = {}  # state key -> action -> Q; absent means Q_INIT
        self.memory: list[tuple[list[Step], float]] = []  # replay memory: trajectory, reward
        self.rewards: dict[str, float] = {}  # proposal key -> reward, to replay a network drawn again
        self.sampled = 0  # networks proposed: where the epsilon schedule stands
        self._derive_actions()

    # ---- states and actions, from the space ----------------------------------------

    def _derive_actions(self) -> None:
        space = self.space
        shape, _ = space.bound()
        self._flat_input = len(shape) == 1
        self._start = State(0, "input", max(shape[1:]) if len(shape) > 1 else shape[0], 0, 0)
        self._layers: dict[str, tuple[str, dict[str, Any]]] = {}  # action -> (op, attrs)
        conv_blocks = [int(v) for v in space.layout_domain("conv_blocks", 0).values()] if space.has_conv() else [0]
        self._convs = (min(conv_blocks), max(conv_blocks))
        for op in space.conv_ops() if self._convs[1] else ():
            d = space.domains(op)  # kernel_h is 1 on 1-D data
            fixed = {"batch_norm": _fixed(d["batch_norm"]), "activation": _fixed(d["activation"], "relu")}
            if space.one_d:
                kernels = [(1, k) for k in d["kernel_w"].values()]
            else:  # square receptive fields, as in the paper, where the space allows them
                kernels = [(k, k) for k in d["kernel_w"].values() if d["kernel_h"].contains(k)] or [
                    (h, w) for h in d["kernel_h"].values() for w in d["kernel_w"].values()]
            for c in d["channels"].values():
                for kh, kw in kernels:
                    for s in d["stride"].values():
                        k = f"{kw}" if space.one_d else f"{kh}x{kw}"
                        self._layers[f"{op} {k} s{s} c{c}"] = (op, {
                            "channels": c, "kernel_h": kh, "kernel_w": kw, "stride": s, **fixed})
        if "pool" in space.ops:
            for kind in space.layout_domain("pool", "none").values():
                for size in space.ops["pool"]["size"].values() if kind != "none" else ():
                    self._layers[f"pool {kind} {size}"] = ("pool", {"kind": kind, "size": size})
        for reduce in REDUCTIONS:
            self._layers[reduce] = (reduce, {})
        self._tree_next: dict[str, str] = {}  # a tree state's layer -> the attribute it decides
        self._tree_values: dict[str, tuple[str, Any]] = {}  # tree action -> (attribute, value)
        if "cell" in space.ops:
            d = space.domains("cell")
            # A layer is checked against the space's limits with the first tree listed; every
            # listed value fits every tree (nas.space.cell), so the tree is chosen afterwards.
            first = {name: domain.values()[0] for name, domain in d.items() if name != "units"}
            decided = [n for n in (*NODE_ATTRS, "inject", "inject_at", "memory_from") if len(d[n].values()) > 1]
            for units in d["units"].values():
                self._layers[f"cell {units}"] = ("cell", {"units": units, **first})
                self._chain_tree(f"cell {units}", decided, d)
        dense_layers = [int(v) for v in space.layout_domain("dense_layers", 0).values()] if "dense" in space.ops \
            else [0]
        self._dense = (min(dense_layers), max(dense_layers))
        if self._dense[1]:
            d = space.ops["dense"]
            fixed = {"activation": _fixed(d["activation"], "relu"), "dropout": _fixed(d["dropout"])}
            for units in d["units"].values():
                self._layers[f"dense {units}"] = ("dense", {"units": units, **fixed})
        self._layers[HEAD] = ("head", {})
        self._by_node = {(op, Node.make(op, **attrs).attrs): a for a, (op, attrs) in self._layers.items()
                         if op != "cell"}
        self._memo: dict[State, list[str]] = {}

    def _chain_tree(self, cell: str, decided: list[str], domains: dict[str, Domain]) -> None:
        """The tree's decisions after the action `cell`: state `"<cell> tree"` decides the first
        attribute, and the state a value leads to, `"<cell> <attribute>=<value>"`, the next."""
        before = [f"{cell} tree"]
        for name in decided:
            self._tree_next.update(dict.fromkeys(before, name))
            before = []
            for value in domains[name].values():
                self._tree_values[f"{name}={value}"] = (name, value)
                if not (name == "inject" and value == NONE):  # no memory: inject_at and memory_from stay 0
                    before.append(f"{cell} {name}={value}")

    def _actions(self, state: State) -> list[str]:
        """The actions the paper's rules allow in a state (shape and size limits are checked on the prefix)."""
        if state not in self._memo:
            self._memo[state] = self._rules(state)
        return self._memo[state]

    def _rules(self, state: State) -> list[str]:
        if state.layer in self._tree_next:  # a decision of a cell's tree
            name = self._tree_next[state.layer]
            return [a for a, (n, _) in self._tree_values.items() if n == name]
        op, attrs = self._layers.get(state.layer, ("input", {}))
        if op in (*REDUCTIONS, "cell", "dense"):
            top = attrs["units"] if op == "dense" else None  # dense units never grow
            dense = [a for a, (o, at) in self._layers.items() if o == "dense" and (top is None or at["units"] <= top)]
            return (dense if state.dense < self._dense[1] else []) + ([HEAD] if state.dense >= self._dense[0] else [])
        actions = []
        for action, (o, at) in self._layers.items():
            if o in CONV_OPS and state.convs < self._convs[1]:
                fits = all(k == 1 or k <= state.size for k in (at["kernel_h"], at["kernel_w"]))
            elif o == "pool":  # only right after a convolution: never pool after pool, nor the raw input
                fits = op in CONV_OPS and at["size"] <= state.size
            else:
                continue
            if fits:
                actions.append(action)
        if state.convs >= self._convs[0]:
            for reduce in self.space.reductions(state.convs):  # no global pool of the raw input
                small = state.size <= DENSE_SIZE or (self._flat_input and not state.convs)
                if reduce == "cell":
                    actions.extend(a for a, (o, _) in self._layers.items() if o == "cell")
                elif reduce == "global_pool" or small:
                    actions.append(reduce)
        return actions

    def _after(self, state: State, action: str, shape: Shape) -> State:
        op = self._layers[action][0]
        return State(state.depth + 1, action, max(shape[1:]) if len(shape) > 1 else 0,
                     state.convs + (op in CONV_OPS), state.dense + (op == "dense"))

    def _grow(self, nodes: list[Node], shape: Shape, action: str) -> tuple[list[Node], Shape] | None:
        """The prefix with `action` written, and that layer's output shape; None when the
        prefix with its cheapest ending is not a valid network of the space."""
        op, attrs = self._layers[action]
        grown = list(nodes)
        if op in (*CONV_OPS, "cell") and len(shape) == 1:  # flat features: view them as one signal
            grown.append(Node.make("signal", [len(grown) - 1]))
        grown.append(Node.make(op, [len(grown) - 1], **attrs))
        ending: list[Node] = []
        if op in (*CONV_OPS, "pool"):
            reduce = "global_pool" if "global_pool" in self.space.reductions(1) else "flatten"
            ending.append(Node.make(reduce, [len(grown) - 1]))
        if op != "head":
            ending.append(Node.make("head", [len(grown) + len(ending) - 1]))
        try:
            plan = self.space.validate(Architecture(tuple(grown + ending)))
        except ArchitectureError:
            return None
        return grown, plan.nodes[len(grown) - 1].out_shape

    # ---- walking and learning ------------------------------------------------------

    @property
    def epsilon(self) -> float:
        """Epsilon for the next network."""
        return epsilon_at(self.sampled, self.trials)

    def _choose(self, state: State, options: list[str], epsilon: float) -> str:
        if self.rng.random() < epsilon:
            return self.rng.choice(options)
        row = self.q.get(state.key, {})
        best = max(row.get(a, Q_INIT) for a in options)
        ties = [a for a in options if row.get(a, Q_INIT) == best]
        return ties[0] if len(ties) == 1 else self.rng.choice(ties)  # unexplored actions tie at Q_INIT

    def _tree(self, state: State, cell: str,
              pick: Callable[[State, list[str]], str | None]) -> tuple[dict[str, Any], list[Step]] | None:
        """The attributes and steps of the tree written after the action `cell` taken in `state`,
        each decision `pick(tree state, options)`; None when `pick` gives up."""
        attrs: dict[str, Any] = {}
        steps: list[Step] = []
        layer = f"{cell} tree"
        while layer in self._tree_next:
            at = state._replace(layer=layer)
            action = pick(at, self._actions(at))
            if action is None:
                return None
            steps.append((at, action))
            name, value = self._tree_values[action]
            attrs[name] = value
            layer = f"{cell} {action}"
        if attrs.get("inject") == NONE:
            attrs.update(inject_at=0, memory_from=0)
        return attrs, steps

    def _walk(self, epsilon: float) -> tuple[Architecture, list[Step]] | None:
        """One epsilon-greedy network and its trajectory, or None at a dead end."""
        state, nodes, shape = self._start, [Node.make("input")], self.space.bound()[0]
        path: list[Step] = []
        while True:
            options = list(self._actions(state))
            while options:
                action = self._choose(state, options, epsilon)
                grown = self._grow(nodes, shape, action)
                if grown is not None:
                    break
                options.remove(action)  # over a limit of the space here: choose again without it
            else:
                return None
            path.append((state, action))
            nodes, shape = grown
            if action == HEAD:
                return Architecture(tuple(nodes)), path
            if nodes[-1].op == "cell":
                tree, steps = self._tree(state, action, lambda at, options: self._choose(at, options, epsilon))
                nodes[-1] = nodes[-1].with_attrs(**tree)
                path.extend(steps)
            state = self._after(state, action, shape)

    def _path(self, arch: Architecture) -> list[Step] | None:
        """The trajectory that writes `arch`, or None if MetaQNN could not have written it."""
        try:
            plan = self.space.validate(arch)
        except ArchitectureError:
            return None
        state, path = self._start, []
        for i, node in enumerate(arch.nodes[1:], start=1):
            if node.inputs != (i - 1,):
                return None  # not a chain
            if node.op == "signal" and i == 1 and arch.nodes[2].op in (*CONV_OPS, "cell"):
                continue  # part of the first convolution's action
            action = f"cell {node.get('units')}" if node.op == "cell" else self._by_node.get((node.op, node.attrs))
            if action is None or action not in self._actions(state):
                return None
            path.append((state, action))
            if node.op == "cell":
                def recorded(at: State, options: list[str], node: Node = node) -> str | None:
                    name = self._tree_next[at.layer]
                    action = f"{name}={node.get(name)}"
                    return action if action in options else None

                written = self._tree(state, action, recorded)
                if written is None:
                    return None  # a value the space does not list
                path.extend(written[1])
            state = self._after(state, action, plan.nodes[i].out_shape)
        return path

    def _value(self, state: State) -> float:
        row = self.q.get(state.key, {})
        return max((row.get(a, Q_INIT) for a in self._actions(state)), default=Q_INIT)

    def _update(self, path: list[Step], reward: float) -> None:
        """The paper's Algorithm 3: the last step towards the reward, then each step towards
        the best Q of the state it led to, from the end backwards (rewards on the way are 0)."""
        for i in reversed(range(len(path))):
            state, action = path[i]
            target = reward if i == len(path) - 1 else GAMMA * self._value(path[i + 1][0])
            row = self.q.setdefault(state.key, {})
            row[action] = (1 - ALPHA) * row.get(action, Q_INIT) + ALPHA * target

    def _remember(self, path: list[Step], reward: float) -> None:
        self.memory.append((path, reward))
        for _ in range(REPLAY):
            self._update(*self.memory[self.rng.randrange(len(self.memory))])

    # ---- the protocol --------------------------------------------------------------

    def _propose(self, n: int) -> list[Candidate]:
        candidates: list[Candidate] = []
        redraws = 0
        while len(candidates) < n and redraws < MAX_REDRAWS:
            epsilon = self.epsilon
            walked = self._walk(epsilon)
            if walked is not None and self._fresh(walked[0], self.hparams):
                self.sampled += 1
                candidates.append(self._candidate(walked[0], self.hparams,
                                                  info={"epsilon": epsilon, "steps": len(walked[1])}))
                redraws = 0
                continue
            redraws += 1
            if walked is not None:  # trained before: learn from its accuracy again instead (pending: skip)
                reward = self.rewards.get(proposal_key(walked[0], self.hparams))
                if reward is not None:
                    self._remember(walked[1], reward)
        if not candidates and not self.pending:
            self._finish(f"{MAX_REDRAWS} walks in a row repeated trained networks or hit a limit of the space "
                         f"'{self.space.name}'")
        return candidates

    def _learn(self, evaluations: list[Evaluation]) -> None:
        super()._learn(evaluations)
        for evaluation in evaluations:
            if evaluation.status == TrialStatus.ERROR:
                continue  # the environment failed, not the network: nothing to learn
            reward = evaluation.val_acc if evaluation.ok and evaluation.val_acc is not None else 0.0
            candidate = evaluation.candidate
            self.rewards[proposal_key(candidate.arch, candidate.hparams)] = reward
            path = self._path(candidate.arch)
            if path is not None:  # results of other methods count when MetaQNN could have written them
                self._remember(path, reward)

    def report(self) -> dict[str, Any]:
        """Epsilon now, how much was learned, and the Q-table's best REPORT_ROWS rows, best first."""
        rows = sorted(((q, s, a) for s, row in self.q.items() for a, q in row.items()),
                      key=lambda r: (-r[0], r[1], r[2]))
        return {"epsilon": self.epsilon, "networks": self.sampled, "trials": self.trials, "states": len(self.q),
                "memory": len(self.memory),
                "q": [{"state": s, "action": a, "q": round(q, 4)} for q, s, a in rows[:REPORT_ROWS]]}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trials": self.trials, "hparams": self.hparams.to_json(),
                "sampled": self.sampled, "q": self.q, "rewards": self.rewards,
                "memory": [{"path": [[*state, action] for state, action in path], "reward": reward}
                           for path, reward in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.trials = int(state["trials"])
        self.hparams = HParams.from_json(state["hparams"])
        self.sampled = int(state["sampled"])
        self.q = {s: dict(row) for s, row in state["q"].items()}
        self.rewards = dict(state["rewards"])
        self.memory = [([(State(*step[:-1]), step[-1]) for step in m["path"]], m["reward"]) for m in state["memory"]]


__all__ = ["MetaQNN", "State", "epsilon_at"]
