"""The grammar that NAS controllers write with: every sentence it lets through is a valid
network of its space (property-based), and another method's network replays to the same
tokens."""

from __future__ import annotations

import doctest
import random

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import nas.space.grammar as grammar_module
from nas.space import SearchSpace
from nas.space.grammar import GrammarError, picks_for, write
from tests.conftest import ROOT

SPACES = {"cnn": (1, 8, 8), "small-cnn": (1, 8, 8), "conv1d": (1, 40), "flat": (40,), "mlp": (64,),
          "rnn-cell": (2, 30), "rnn-cell-small": (1, 40), "rnn-cell-gated": (2, 30)}
BOUND = {name: SearchSpace.load(ROOT / f"spaces/{name}.yaml").bind(shape, 10) for name, shape in SPACES.items()}


def test_docstring_example_runs():
    assert doctest.testmod(grammar_module).failed == 0


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(BOUND)), seed=st.integers(0, 2**32 - 1))
def test_every_sentence_written_is_a_valid_network_and_replays(name, seed):
    space, rng = BOUND[name], random.Random(seed)
    tokens, episode = write(space, lambda decision: rng.choice(decision.options))
    arch, hparams = space.from_tokens(tokens)
    space.validate(arch, hparams)  # raises if the masks let an invalid network through
    assert space.to_tokens(arch, hparams) == tokens
    assert picks_for(space, tokens) == [pick for _, pick in episode]
    assert all(pick in decision.options for decision, pick in episode)


def test_the_masks_keep_a_tight_parameter_limit():
    # max_params this low forbids most channel counts after the first conv layer: masked, not rejected.
    raw = {"name": "tight", "limits": {"max_params": 3000},
           "ops": {"conv": {"channels": [4, 64], "kernel_h": [3], "kernel_w": [3], "stride": [1],
                            "batch_norm": [False], "activation": ["relu"]},
                   "global_pool": {}, "flatten": {}, "dense": {"units": [8, 512], "activation": ["relu"],
                                                               "dropout": [0.0]}},
           "layout": {"conv_blocks": {"int": [1, 3]}, "reduce": ["global_pool", "flatten"],
                      "dense_layers": {"int": [0, 2]}},
           "hparams": {}}
    space = SearchSpace.from_dict(raw).bind((1, 8, 8), 10)
    rng = random.Random(0)
    sizes = []
    for _ in range(30):
        tokens, episode = write(space, lambda decision: rng.choice(decision.options))
        sizes.append(space.validate(space.from_tokens(tokens)[0]).params)
    assert max(sizes) <= 3000 and len(set(sizes)) > 3
    masked = [d for d, _ in episode if d.what == "channels"]
    assert masked and all(d.options == ("channels=4",) for d in masked[1:])  # 4->64 with 3x3 alone is 2,368


def test_skip_connections_come_from_anchors_and_feed_the_conv_they_open():
    space, rng = BOUND["small-cnn"], random.Random(3)
    skips = 0
    for _ in range(40):
        tokens, episode = write(space, lambda decision: rng.choice(decision.options))
        arch = space.from_tokens(tokens)[0]
        for i, node in enumerate(arch.nodes):
            if node.op == "add":
                skips += 1
                assert arch.nodes[i + 1].op == "conv" and len(node.inputs) >= 2
        assert sum(n.op == "add" for n in arch.nodes) == sum(
            any(d.what == "anchor" and p == "yes" for d, p in episode if d.layer == layer)
            for layer in {d.layer for d, _ in episode if d.what == "anchor"})
    assert skips > 0


def test_conv_layers_can_feed_a_recurrent_cell():
    raw = yaml.safe_load((ROOT / "spaces/rnn-cell.yaml").read_text())
    raw["ops"]["conv"] = {"channels": [8], "kernel_h": [1], "kernel_w": [3, 5], "stride": [1, 2],
                          "batch_norm": [False], "activation": ["relu"]}
    raw["layout"]["conv_blocks"] = {"int": [0, 2]}
    space = SearchSpace.from_dict(raw).bind((1, 40), 10)
    rng = random.Random(0)
    ops = set()
    for _ in range(10):
        tokens, _ = write(space, lambda decision: rng.choice(decision.options))
        arch = space.from_tokens(tokens)[0]
        space.validate(arch)
        ops.add(tuple(node.op for node in arch.nodes if node.op in ("conv", "cell")))
    assert ("cell",) in ops and any(len(o) > 1 for o in ops)


def test_a_network_outside_the_grammar_is_not_replayed():
    space = BOUND["small-cnn"]
    arch, hparams = space.sample(random.Random(0))
    tokens = space.to_tokens(arch, hparams)
    assert picks_for(space, ["identity", "<1", *tokens]) is None
    with pytest.raises(GrammarError, match="not an option"):
        write(space, follow=["dense"] * 50)
