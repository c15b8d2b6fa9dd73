"""The grammar of a space's token sentences: which token may come next.

A controller (`--strategy nas-rl`) writes a sentence one decision at a time, choosing
among tokens of `space.vocabulary()`; `space.from_tokens` turns the tokens into a network.
`write(space, choose)` asks `choose` for every decision and offers only the options from
which the sentence can still end as a valid network of the space: each option is tried with the sentence's cheapest ending (the fewest layers the
layout allows, the smallest channels, kernels and units, the largest stride), checked by
shape inference, so the limits on parameters, nodes and pool sizes mask options instead of
rejecting sentences. (The cheapest ending is a heuristic: parameters grow with channels,
kernels and units and shrink with stride; a hyperconv's generator per kernel size can make a
new smallest kernel dearer than reusing one, so near max_params it may mask a little much.)

Sentences follow the space's layout, as random search writes them:

    sentence := [signal] layer* reduction dense* head hparam*   (reduction: e.g. flatten, or a cell)
    layer    := [skip <1 <k...] conv attrs <1 [pool attrs <1]   (conv: the layout's conv_op, e.g. hyperconv)

with the skip connections of Zoph and Le: a conv layer's input may sum (or concatenate,
whichever ops `layout.skip` offers) the outputs of any earlier layers besides the previous
one. Those are `anchor` decisions, yes or no for each earlier layer, taken right after the
controller chose `conv`, so the skip node's tokens come before the `conv` it feeds.
Flat features get the `signal` stem before the first conv layer, or before a recurrent
cell that reads them as a sequence.

    >>> import random
    >>> space = SearchSpace.load("spaces/small-cnn.yaml").bind((1, 8, 8), 10)
    >>> rng = random.Random(0)
    >>> tokens, episode = write(space, lambda decision: rng.choice(decision.options))
    >>> arch, hparams = space.from_tokens(tokens)
    >>> space.is_valid(arch, hparams), picks_for(space, tokens) == [pick for _, pick in episode]
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, fields

from nas.space.architecture import ArchitectureError, HParams
from nas.space.domain import token_text
from nas.space.shapes import CONV_OPS, OPS
from nas.space.space import SearchSpace

YES, NO = "yes", "no"
SKIPS = ("add", "concat")
# The cheapest next step where the grammar allows several: end a stage before growing it.
_CHEAPEST_OP = ("head", "global_pool", "flatten", "cell", "dense", "conv", "hyperconv", "signal", "pool")


@dataclass(frozen=True)
class Decision:
    """One choice of the controller: among tokens, or yes/no for an anchor.

    what: "op" (the next node), an attribute ("channels"), a hyper-parameter ("hp.lr"),
    "skip" (sum or concatenate anchors), or "anchor" (whether the output of the earlier
    layer `earlier` joins the input of conv layer `layer`; layer 0 is the stem).
    """

    what: str
    options: tuple[str, ...]
    layer: int = 0
    earlier: int = 0


Episode = list[tuple[Decision, str]]  # every decision, with the options the masks left, and its pick
_Writer = Generator[Decision, str, None]


class GrammarError(ArchitectureError):
    """The sentence cannot go on: no option ends in a valid network of the space."""


def write(space: SearchSpace, choose: Callable[[Decision], str] | None = None,
          follow: list[str] | None = None) -> tuple[list[str], Episode]:
    """A sentence of `space` and its episode. `choose` picks one of `decision.options` at
    every decision (some have one option); `follow` instead lists the picks (`picks_for`)."""
    tokens: list[str] = []
    picks: list[str] = []
    episode: Episode = []
    writer = _sentence(space, tokens)
    decision = next(writer)
    while True:
        options = decision.options
        if not decision.what.startswith("hp."):  # hyper-parameters never make a network invalid
            options = tuple(o for o in options if _completes(space, picks + [o]))
        if not options:
            raise GrammarError(f"no option of '{decision.what}' ends in a valid network of space "
                               f"'{space.name}' after {len(picks)} decisions; its limits are too tight "
                               "for the layout (raise limits.max_params or limits.max_nodes).")
        decision = Decision(decision.what, options, decision.layer, decision.earlier)
        pick = follow[len(picks)] if follow is not None else choose(decision)  # type: ignore[misc]
        if pick not in options:
            raise GrammarError(f"'{pick}' is not an option of {decision}.")
        episode.append((decision, pick))
        picks.append(pick)
        try:
            decision = writer.send(pick)
        except StopIteration:
            return tokens, episode


def picks_for(space: SearchSpace, tokens: list[str]) -> list[str] | None:
    """The picks that write `tokens`, or None if the grammar cannot.

    This is how a controller learns from networks other methods wrote: it replays them
    with `write(space, follow=picks)`.
    """
    def extend(picks: list[str]) -> list[str] | None:
        written, decision = _replay(space, picks)
        if written != tokens[:len(written)]:
            return None
        if decision is None:
            return picks if written == tokens else None
        for option in decision.options:
            if (found := extend(picks + [option])) is not None:
                return found
        return None

    return extend([])


def _replay(space: SearchSpace, picks: list[str], then: Callable[[Decision], str] | None = None,
            ) -> tuple[list[str], Decision | None]:
    """The tokens written after `picks` (not checked; then `then` picks to the end, if given),
    and the next decision (None at the end)."""
    tokens: list[str] = []
    writer = _sentence(space, tokens)
    try:
        decision = next(writer)
        for pick in picks:
            decision = writer.send(pick)
        while then is not None:
            decision = writer.send(then(decision))
    except StopIteration:
        return tokens, None
    return tokens, decision


def _completes(space: SearchSpace, picks: list[str]) -> bool:
    """Whether `picks` followed by the cheapest picks write a valid network of the space."""
    tokens, _ = _replay(space, picks, then=_cheapest)
    try:
        return space.is_valid(space.from_tokens(tokens)[0])
    except ArchitectureError:
        return False


def _cheapest(decision: Decision) -> str:
    options = decision.options
    if decision.what == "op":
        return min(options, key=lambda o: _CHEAPEST_OP.index(o) if o in _CHEAPEST_OP else len(_CHEAPEST_OP))
    if decision.what == "anchor":
        return NO
    values = [o.split("=", 1)[1] for o in options]
    if decision.what == "stride":
        return options[max(range(len(values)), key=lambda i: int(values[i]))]
    if decision.what in ("channels", "units", "kernel_h", "kernel_w", "size"):
        return options[min(range(len(values)), key=lambda i: int(values[i]))]
    if decision.what == "batch_norm" and "batch_norm=false" in options:
        return "batch_norm=false"
    return options[0]


def _sentence(space: SearchSpace, tokens: list[str]) -> _Writer:
    """The grammar as a generator: yields each decision, receives the pick, appends to `tokens`."""
    size = 1  # nodes written, the input included: the next node's index
    outputs = [0]  # node index of each layer's output; [0] is the stem (the input, or its signal view)

    def node(op: str, inputs: list[int]) -> _Writer:
        nonlocal size
        tokens.append(op)
        domains = space.domains(op)
        for name in OPS[op].attrs:  # the language's order, as `space.to_tokens` writes them
            tokens.append((yield Decision(name, tuple(f"{name}={token_text(v)}" for v in domains[name].values()))))
        tokens.extend(f"<{size - j}" for j in inputs)
        size += 1

    layers = space.layout_domain("conv_blocks", 0).values() if space.has_conv() else (0,)
    dense_layers = space.layout_domain("dense_layers", 0).values() if "dense" in space.ops else (0,)
    pools = [k for k in space.layout_domain("pool", "none").values() if k != "none"]
    skips = [s for s in space.layout_domain("skip", "none").values() if s in SKIPS]
    conv_ops = tuple(space.conv_ops())
    flat = len(space.bound()[0]) == 1
    convs = 0
    last = "input"
    while True:  # the layers, then the reduction
        options = []
        if convs < max(layers):
            options.extend(("signal",) if flat and not convs else conv_ops)
        if last in CONV_OPS and pools:
            options.append("pool")
        if convs >= min(layers):
            options.extend(space.reductions(convs))
        op = yield Decision("op", tuple(options))
        if op == "signal":  # the stem only exists to be convolved: a conv layer follows
            yield from node("signal", [size - 1])
            outputs[0] = size - 1
            op = yield Decision("op", conv_ops)
        if op in CONV_OPS:
            convs += 1
            chosen = []
            for earlier in range(len(outputs) - 1):  # the previous output is the input anyway
                if skips and (yield Decision("anchor", (NO, YES), layer=convs, earlier=earlier)) == YES:
                    chosen.append(outputs[earlier])
            if chosen:
                skip = (yield Decision("skip", tuple(skips))) if len(skips) > 1 else skips[0]
                yield from node(skip, [size - 1, *chosen])
            yield from node(op, [size - 1])
            outputs.append(size - 1)
        elif op == "pool":
            tokens.append("pool")
            tokens.append((yield Decision("kind", tuple(f"kind={token_text(k)}" for k in pools))))
            tokens.append((yield Decision("size", tuple(f"size={token_text(v)}"
                                                        for v in space.ops["pool"]["size"].values()))))
            tokens.append("<1")
            size += 1
            outputs[-1] = size - 1
        else:
            if op == "cell" and flat and not convs:  # a cell reads flat features as a sequence, too
                yield from node("signal", [size - 1])
            yield from node(op, [size - 1])
            break
        last = op
    dense = 0
    while True:
        options = (["dense"] if dense < max(dense_layers) else []) + (["head"] if dense >= min(dense_layers) else [])
        op = yield Decision("op", tuple(options))
        yield from node(op, [size - 1])
        if op == "head":
            break
        dense += 1
    for f in fields(HParams):
        tokens.append((yield Decision(f"hp.{f.name}", tuple(f"hp.{f.name}={token_text(v)}"
                                                             for v in space.hparam_domain(f.name).values()))))


__all__ = ["Decision", "Episode", "GrammarError", "NO", "YES", "picks_for", "write"]
