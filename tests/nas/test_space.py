"""The language and the space: round trips, ids, validation messages, sampling, grid, encodings."""

import itertools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.space import Architecture, ArchitectureError, HParams, Node, SearchSpace, SpaceError
from nas.trial import Budget, Candidate, TrialSetting

SHAPES = [(1, 8, 8), (1, 40), (3, 5, 7), (20,)]
SPACES = ["spaces/cnn.yaml", "spaces/mlp.yaml", "spaces/small-cnn.yaml", "spaces/conv1d.yaml", "spaces/flat.yaml"]


def bound(path, shape, classes=10):
    return SearchSpace.load(path).bind(shape, classes)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES), path=st.sampled_from(SPACES))
def test_sample_validate_json_id_tokens_round_trip(seed, shape, path):
    space = bound(path, shape)
    arch, hparams = space.sample(random.Random(seed))
    plan = space.validate(arch, hparams)
    assert plan.params <= space.max_params
    assert plan.nodes[-1].out_shape == (10,)
    # JSON round trip keeps the id; a parse of the text never evaluates anything
    text = json.dumps(arch.to_json())
    again = Architecture.from_json(json.loads(text))
    assert again == arch and again.arch_id == arch.arch_id
    assert HParams.from_json(json.loads(json.dumps(hparams.to_json()))) == hparams
    # tokens and back
    assert space.from_tokens(space.to_tokens(arch, hparams)) == (arch, hparams)
    vocabulary = set(space.vocabulary())
    assert all(t in vocabulary for t in space.to_tokens(arch, hparams) if not t.startswith("hp.lr="))
    # fixed-length vector in [0, 1]
    vector = space.encode(arch, hparams)
    assert len(vector) == space.encoding_size and all(0.0 <= v <= 1.0 for v in vector)


def test_same_network_same_id_whoever_writes_it():
    a = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1])))
    b = Architecture.from_json({"nodes": [{"op": "input"}, {"inputs": [0], "op": "flatten", "attrs": {}},
                                          {"op": "head", "inputs": [1]}]})
    assert a.arch_id == b.arch_id
    c = Candidate(a, HParams(), Budget(3))
    assert c.trial_key(TrialSetting("fp", 0)) == Candidate(b, HParams(), Budget(3)).trial_key(TrialSetting("fp", 0))
    assert c.trial_key(TrialSetting("fp", 0)) != c.trial_key(TrialSetting("fp", 1))
    assert c.trial_key(TrialSetting("fp", 0)) != Candidate(a, HParams(lr=0.01), Budget(3)).trial_key(TrialSetting("fp", 0))
    assert c.trial_key(TrialSetting("fp", 0)) != Candidate(a, HParams(), Budget(4)).trial_key(TrialSetting("fp", 0))
    assert c.trial_key(TrialSetting("fp", 0)) != c.trial_key(TrialSetting("other-data", 0))


def test_candidate_json_round_trip():
    space = bound("spaces/cnn.yaml", (1, 8, 8))
    arch, hp = space.sample(random.Random(3))
    c = Candidate(arch, hp, Budget(5, 30.0), parents=("r1",), inherit_from="r1", generation=2,
                  info={"mutation": "identity"})
    again = Candidate.from_json(json.loads(json.dumps(c.to_json())))
    assert again.to_json() == c.to_json()
    assert again.trial_key(TrialSetting("fp", 0)) == c.trial_key(TrialSetting("fp", 0))


def conv(i, **changes):
    attrs = dict(channels=8, kernel_h=3, kernel_w=3, stride=1, batch_norm=False, activation="relu")
    attrs.update(changes)
    return Node.make("conv", [i], **attrs)


def net(*middle):
    nodes = [Node.make("input"), *middle]
    return Architecture(tuple(nodes) + (Node.make("head", [len(nodes) - 1]),))


@pytest.mark.parametrize("arch_fn, words", [
    (lambda: net(conv(0, kernel_h=4), Node.make("flatten", [1])), ["node 1", "kernel_h", "odd"]),
    (lambda: net(conv(0, channels=12), Node.make("flatten", [1])), ["node 1", "channels", "one of"]),
    (lambda: net(conv(0), Node.make("swirl", [1]), Node.make("flatten", [2])), ["node 2", "swirl"]),
    (lambda: net(conv(0)), ["node 2", "head", "flat input"]),
    (lambda: net(Node.make("flatten", [0]), conv(1), Node.make("flatten", [2])), ["node 2", "conv", "spatial"]),
    (lambda: net(*[Node.make("pool", [i], kind="max", size=2) for i in range(4)], Node.make("flatten", [4])),
     ["node 4", "pool", "smaller than the pool size"]),
    (lambda: net(conv(0), Node.make("flatten", [0]), Node.make("flatten", [2])), ["feed nothing", "1"]),
    (lambda: net(Node.make("flatten", [0]), Node.make("dense", [1], units=256, activation="relu", dropout=0.0),
                 *[Node.make("dense", [i], units=256, activation="relu", dropout=0.0) for i in range(2, 30)]),
     ["max_nodes"]),
])
def test_invalid_sentences_name_the_node_and_rule(arch_fn, words):
    space = bound("spaces/cnn.yaml", (1, 8, 8))
    with pytest.raises(ArchitectureError) as err:
        space.validate(arch_fn())
    for word in words:
        assert word in str(err.value)


def test_structural_errors_are_caught_at_parse_time():
    with pytest.raises(ArchitectureError, match="node 1 .*not an earlier node"):
        Architecture.from_json({"nodes": [{"op": "input"}, {"op": "flatten", "inputs": [1]}]})
    with pytest.raises(ArchitectureError, match="first node must be"):
        Architecture.from_json({"nodes": [{"op": "flatten"}, {"op": "head", "inputs": [0]}]})
    with pytest.raises(ArchitectureError, match="attribute 'units' must be a number"):
        Architecture.from_json({"nodes": [{"op": "input"}, {"op": "head", "inputs": [0], "attrs": {"units": [1]}}]})
    with pytest.raises(ArchitectureError, match="unknown hyper-parameters"):
        HParams.from_json({"lr": 0.1, "momentum": 0.9})
    with pytest.raises(ArchitectureError, match="optimizer 'rmsprop'"):
        HParams(optimizer="rmsprop")


def test_parameter_limit_rejects_huge_networks():
    space = bound("spaces/cnn.yaml", (3, 64, 64))
    huge = net(conv(0, channels=64), Node.make("flatten", [1]),
               Node.make("dense", [2], units=256, activation="relu", dropout=0.0))
    with pytest.raises(ArchitectureError, match="max_params=1,000,000"):
        space.validate(huge)


def test_one_d_data_uses_one_d_kernels():
    space = bound("spaces/cnn.yaml", (1, 40))
    for seed in range(30):
        arch, _ = space.sample(random.Random(seed))
        assert all(n.get("kernel_h") in (None, 1) for n in arch.nodes)
    with pytest.raises(ArchitectureError, match="1-D"):
        space.validate(net(conv(0, kernel_h=3), Node.make("flatten", [1])))


def test_tabular_data_gets_perceptrons_only():
    space = bound("spaces/cnn.yaml", (20,))
    ops = {n.op for seed in range(30) for n in space.sample(random.Random(seed))[0].nodes}
    assert ops <= {"input", "flatten", "dense", "head"}


def test_a_space_with_the_signal_op_convolves_over_flat_features():
    space = bound("spaces/flat.yaml", (20,))
    archs = [space.sample(random.Random(seed))[0] for seed in range(30)]
    assert any(a.nodes[1].op == "signal" for a in archs) and any(a.nodes[1].op == "flatten" for a in archs)
    for arch in archs:  # the view comes first, and only where convolutions follow
        assert [n.op for n in arch.nodes].count("signal") == (arch.nodes[2].op == "conv")
        assert all(n.get("kernel_h") in (None, 1) for n in arch.nodes)


def test_cnn_space_can_write_a_plain_perceptron_and_skips():
    space = bound("spaces/cnn.yaml", (1, 8, 8))
    archs = [space.sample(random.Random(seed))[0] for seed in range(200)]
    assert any(not any(n.op == "conv" for n in a.nodes) for a in archs)
    assert any(any(n.op == "add" for n in a.nodes) for a in archs)
    assert any(any(n.op == "pool" for n in a.nodes) for a in archs)


def test_sampling_is_deterministic():
    space = bound("spaces/cnn.yaml", (1, 8, 8))
    a = [space.sample(random.Random(7)) for _ in range(3)]
    b = [space.sample(random.Random(7)) for _ in range(3)]
    assert a == b


def test_grid_enumerates_valid_distinct_sentences_in_order():
    space = SearchSpace.from_dict({
        "ops": {"dense": {"units": [8, 16], "activation": ["relu"], "dropout": [0.0]}, "flatten": {}},
        "layout": {"reduce": ["flatten"], "dense_layers": {"int": [0, 2]}},
        "hparams": {"lr": {"log": [0.001, 0.01], "grid": 2}},
    }).bind((4,), 2)
    points = list(space.enumerate())
    assert len(points) == space.grid_size() == (1 + 2 + 4) * 2
    assert len({(a.arch_id, h) for a, h in points}) == len(points)
    assert [len(a.nodes) for a, _ in points] == sorted(len(a.nodes) for a, _ in points)
    assert {h.lr for _, h in points} == {0.001, 0.01}


def test_with_hparams_pins_values():
    space = bound("spaces/cnn.yaml", (1, 8, 8)).with_hparams(epochs=7)
    assert {space.sample_hparams(random.Random(s)).epochs for s in range(10)} == {7}


@pytest.mark.parametrize("raw, words", [
    ("[1, 2", ["not valid YAML"]),
    ("name: x\nops: {swirl: {}}\nlayout: {reduce: [flatten]}", ["unknown op 'swirl'"]),
    ("ops: {dense: {units: [8]}}\nlayout: {reduce: [flatten]}", ["ops.dense", "activation"]),
    ("ops: {flatten: {}}\nlayout: {reduce: [flatten], dense_layers: {int: [0, 1]}}", ["dense"]),
    ("ops: {flatten: {}}\nlayout: {reduce: [flatten]}\nhparams: {momentum: [0.9]}", ["momentum"]),
    ("ops: {conv: {channels: {odd: [4, 2]}, kernel_h: [1], kernel_w: [1], stride: [1], batch_norm: [true],"
     " activation: [relu]}, flatten: {}}\nlayout: {reduce: [flatten]}", ["ops.conv.channels", "low <= high"]),
    ("ops: {flatten: {}}\nlayout: {reduce: [flatten], depth: 3}", ["unknown layout keys"]),
    ("ops: {flatten: {}}", ["layout.reduce is required"]),
])
def test_malformed_space_files_say_what_is_wrong(tmp_path, raw, words):
    path = tmp_path / "bad.yaml"
    path.write_text(raw)
    with pytest.raises(SpaceError) as err:
        SearchSpace.load(path)
    for word in words:
        assert word in str(err.value)


def test_missing_space_file():
    with pytest.raises(SpaceError, match="does not exist"):
        SearchSpace.load("spaces/nope.yaml")


def test_yaml_never_constructs_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        SearchSpace.load(path)


def test_bad_tokens_are_rejected():
    space = bound("spaces/cnn.yaml", (1, 8, 8))
    with pytest.raises(ArchitectureError, match="token 0 'swirl'"):
        space.from_tokens(["swirl"])
    arch, hp = space.sample(random.Random(0))
    tokens = space.to_tokens(arch, hp)
    assert space.vocabulary()[:2] == sorted(op for op in space.ops if op != "input")[:2]
    assert len(list(itertools.islice(space.vocabulary(), 5))) == 5
    with pytest.raises(ArchitectureError):
        space.from_tokens(tokens[:1] + ["<9"] + tokens[1:])
