"""The mutations of Real et al. 2017: every child is valid and builds, node_map is honest, each has its effect."""

import random
from collections import Counter
from dataclasses import replace

import pytest
import torch
import yaml

from nas.build import build, remap_state
from nas.space import Architecture, HParams, Node, SearchSpace
from nas.space.mutations import MERGES, MUTATIONS, Mutated, NotApplicable, apply_mutation, mutate
from nas.train import load_matching

SHAPES = [(1, 8, 8), (1, 40)]
CONV_MUTATIONS = ("insert-convolution", "remove-convolution", "alter-stride", "alter-number-of-channels",
                  "filter-size")


def cnn(shape):
    return SearchSpace.load("spaces/cnn.yaml").bind(shape, 10)


def conv(inputs, channels=8, kernel_h=3, kernel_w=3, stride=1):
    return Node.make("conv", inputs, channels=channels, kernel_h=kernel_h, kernel_w=kernel_w, stride=stride,
                     batch_norm=True, activation="relu")


def chain(*hidden):
    """input -> hidden nodes in a line -> global_pool -> head."""
    nodes = [Node.make("input")]
    for node in hidden:
        nodes.append(replace(node, inputs=(len(nodes) - 1,)))
    nodes += [Node.make("global_pool", [len(nodes) - 1]), Node.make("head", [len(nodes)])]
    return Architecture(tuple(nodes))


INSERTED = {"insert-convolution": "conv", "insert-one-to-one": "identity", "add-skip": "add"}
REMOVED = {"remove-convolution": ("conv",), "remove-skip": MERGES}


def assert_node_map(space, parent, child):
    """node_map maps every node the mutation carried over, and only those, to its parent node with the same op.

    A mutation inserts one node, removes one, or keeps every node in place (perhaps with
    other attributes or input shapes); it never reorders, so the map is increasing.
    """
    if child.node_map is None:
        assert child.mutation == "reset-weights"
        return
    before, after = space.validate(parent), space.validate(child.arch)
    for c, p in child.node_map.items():
        assert after.nodes[c].node.op == before.nodes[p].node.op, (child.mutation, c, p)
    pairs = sorted(child.node_map.items())
    assert all(c1 < c2 and p1 < p2 for (c1, p1), (c2, p2) in zip(pairs, pairs[1:])), (child.mutation, pairs)
    unmapped_child = set(range(len(child.arch.nodes))) - set(child.node_map)
    unmapped_parent = set(range(len(parent.nodes))) - set(child.node_map.values())
    if child.mutation in INSERTED:
        # all but the inserted node were carried over (and the signal view that the first
        # convolution over flat features comes with)
        (new,) = {i for i in unmapped_child if child.arch.nodes[i].op != "signal"}
        assert child.arch.nodes[new].op == INSERTED[child.mutation] and not unmapped_parent
    elif child.mutation in REMOVED:
        (gone,) = unmapped_parent  # every child node was carried over
        assert parent.nodes[gone].op in REMOVED[child.mutation] and not unmapped_child
    else:  # nodes kept in place, an altered one included: same op, so all of them inherit
        assert child.node_map == {i: i for i in range(len(parent.nodes))}, child.mutation


def assert_inherits_what_fits(parent, child, shape):
    """Training loads each mapped tensor whose shape is unchanged, exactly; the others keep their fresh values.

    Returns the keys inherited.
    """
    parent_state = build(parent, shape, 10, seed=1).state_dict()
    net = build(child.arch, shape, 10, seed=2)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    offered = remap_state(parent_state, child.node_map or {})
    inherited = load_matching(net, offered)  # load_state_dict raises on any shape mismatch it is handed
    assert inherited == [k for k in fresh if k in offered and offered[k].shape == fresh[k].shape]
    for key, value in net.state_dict().items():
        assert torch.equal(value, offered[key] if key in inherited else fresh[key]), key
    return set(inherited)


def ops(arch):
    return Counter(n.op for n in arch.nodes)


def differing(parent, child):
    return [i for i, (a, b) in enumerate(zip(parent.nodes, child.nodes)) if a != b]


@pytest.mark.parametrize("shape", SHAPES)
def test_random_mutations_give_valid_networks_that_run(shape):
    space, rng = cnn(shape), random.Random(2017)
    applied, built = Counter(), 0
    arch, hparams = space.sample(rng)
    for step in range(1000):
        if step % 6 == 0:  # chains of up to six generations, then a fresh sample
            arch, hparams = space.sample(rng)
        try:
            # Cycle through every mutation by name, and every third step draw one as a search would.
            child = mutate(space, arch, hparams, rng) if step % 3 == 0 else \
                apply_mutation(MUTATIONS[step % len(MUTATIONS)], space, arch, hparams, rng)
        except NotApplicable as exc:
            assert str(exc)
            continue
        assert isinstance(child, Mutated) and child.mutation in MUTATIONS
        applied[child.mutation] += 1
        space.validate(child.arch, child.hparams)
        assert_node_map(space, arch, child)
        if step % 2 == 0:
            net = build(child.arch, shape, 10)
            assert net(torch.zeros(2, *shape)).shape == (2, 10)
            if child.node_map is not None and step % 10 == 0:
                # training takes exactly the mapped tensors that still fit, and they load
                assert_inherits_what_fits(arch, child, shape)
            built += 1
        arch, hparams = child.arch, child.hparams
    assert set(applied) == set(MUTATIONS) - {"alter-cell"}, applied  # every mutation of a CNN, at least once
    assert built >= 300


def test_alter_cell_changes_one_attribute_of_the_tree_and_keeps_its_weights():
    space, rng = SearchSpace.load("spaces/rnn-cell.yaml").bind((1, 40), 10), random.Random(0)
    arch, hparams = space.sample(rng)
    altered: set[str] = set()
    for _ in range(20):
        child = apply_mutation("alter-cell", space, arch, hparams, rng)
        space.validate(child.arch, child.hparams)
        k = next(i for i, node in enumerate(arch.nodes) if node.op == "cell")
        changed = {name for name, value in arch.nodes[k].attrs if child.arch.nodes[k].get(name) != value}
        assert len(changed) == 1 and "base" not in changed
        assert child.node_map == {i: i for i in range(len(arch.nodes))}
        altered |= changed
        arch = child.arch
    assert any(name.startswith("node") for name in altered)  # the tree's ops change, not only its numbers
    with pytest.raises(NotApplicable, match="no recurrent cell"):
        apply_mutation("alter-cell", cnn((1, 8, 8)), *cnn((1, 8, 8)).sample(rng), rng)


def test_mutations_move_flat_features_between_perceptrons_and_conv_nets():
    space, rng = SearchSpace.load("spaces/flat.yaml").bind((40,), 10), random.Random(7)
    applied = Counter()
    for step in range(300):
        if step % 6 == 0:
            arch, hparams = space.sample(rng)
        try:
            child = mutate(space, arch, hparams, rng)
        except NotApplicable:
            continue
        space.validate(child.arch, child.hparams)
        assert_node_map(space, arch, child)
        if step % 3 == 0:
            assert build(child.arch, (40,), 10)(torch.zeros(2, 40)).shape == (2, 10)
        applied[child.mutation] += 1
        arch, hparams = child.arch, child.hparams
    assert {"insert-convolution", "remove-convolution", "filter-size"} <= set(applied), applied

    dense = Node.make("dense", [1], units=32, activation="relu", dropout=0.0)
    perceptron = Architecture((Node.make("input"), Node.make("flatten", [0]), dense, Node.make("head", [2])))
    hparams = HParams(lr=5e-3)  # within the flat space's domain
    child = apply_mutation("insert-convolution", space, perceptron, hparams, random.Random(0))
    assert [n.op for n in child.arch.nodes] == ["input", "signal", "conv", "flatten", "dense", "head"]
    assert child.node_map == {0: 0, 3: 1, 4: 2, 5: 3}
    assert_inherits_what_fits(perceptron, child, (40,))
    # a skip that reads the raw features would add a signal to a vector: no valid place, so refused
    skipped = Architecture((Node.make("input"), replace(dense, inputs=(0,)), Node.make("add", [1, 0]),
                            Node.make("head", [2])))
    with pytest.raises(NotApplicable, match="node"):
        apply_mutation("insert-convolution", space, skipped, hparams, random.Random(0))


@pytest.mark.parametrize("shape", SHAPES)
def test_same_seed_same_child(shape):
    space = cnn(shape)
    arch, hparams = space.sample(random.Random(5))
    for name in MUTATIONS:
        try:
            first = apply_mutation(name, space, arch, hparams, random.Random(9))
        except NotApplicable:
            continue
        assert apply_mutation(name, space, arch, hparams, random.Random(9)) == first
    assert mutate(space, arch, hparams, random.Random(3)) == mutate(space, arch, hparams, random.Random(3))


def test_identity_reset_weights_and_learning_rate():
    space = cnn((1, 8, 8))
    arch, hparams = space.sample(random.Random(0))
    everything = {i: i for i in range(len(arch.nodes))}
    same = apply_mutation("identity", space, arch, hparams, random.Random(0))
    assert (same.arch, same.hparams, same.node_map) == (arch, hparams, everything)
    reset = apply_mutation("reset-weights", space, arch, hparams, random.Random(0))
    assert (reset.arch, reset.hparams, reset.node_map) == (arch, hparams, None)
    lr_domain = space.hparams["lr"]
    for seed in range(50):
        for lr in (3e-4, 1e-3, 1e-2):
            parent = hparams.with_(lr=lr)
            child = apply_mutation("alter-learning-rate", space, arch, parent, random.Random(seed))
            assert child.arch == arch and child.node_map == everything
            assert child.hparams.with_(lr=lr) == parent  # only lr changed
            assert child.hparams.lr != lr and lr_domain.contains(child.hparams.lr)
            assert 1 / 2.001 <= child.hparams.lr / lr <= 2.001
    # a list of learning rates: resampled from the other choices
    listed = space.with_hparams(lr=0.1)
    with pytest.raises(NotApplicable, match="fixes lr"):
        apply_mutation("alter-learning-rate", listed, arch, hparams.with_(lr=0.1), random.Random(0))


@pytest.mark.parametrize("shape", SHAPES)
def test_insert_convolution_matches_its_input_channels(shape):
    space = cnn(shape)
    for seed in range(40):
        rng = random.Random(seed)
        arch, hparams = space.sample(rng)
        child = apply_mutation("insert-convolution", space, arch, hparams, rng)
        assert ops(child.arch) == ops(arch) + Counter(["conv"])
        new = differing(arch, child.arch)[0]
        node = child.arch.nodes[new]
        assert node.op == "conv" and node.inputs == (new - 1,)
        in_channels = space.validate(child.arch).nodes[new].in_shapes[0][0]
        # channels equal the input's; where that is not allowed (the 1-channel input), the nearest allowed
        assert node.get("channels") == (in_channels if in_channels in (8, 16, 32, 64) else 8)
        assert (node.get("kernel_h"), node.get("kernel_w")) == ((1, 3) if len(shape) == 2 else (3, 3))
        assert node.get("stride") in (1, 2)
        assert (node.get("batch_norm"), node.get("activation")) in ((True, "relu"), (False, "none"))
        assert new not in child.node_map  # an inserted node has nothing to inherit


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,attrs", [("alter-stride", {"stride"}),
                                        ("alter-number-of-channels", {"channels"}),
                                        ("filter-size", {"kernel_h", "kernel_w"})])
def test_alter_one_conv_attribute(shape, name, attrs):
    space, seen = cnn(shape), set()
    for seed in range(40):
        rng = random.Random(seed)
        arch, hparams = space.sample(rng)
        try:
            child = apply_mutation(name, space, arch, hparams, rng)
        except NotApplicable as exc:  # no conv, or every change breaks a rule (a pool's input, max_params)
            assert "conv" not in ops(arch) or "node" in str(exc) or "max_params" in str(exc)
            continue
        (k,) = differing(arch, child.arch)
        before, after = arch.nodes[k].attr_dict, child.arch.nodes[k].attr_dict
        changed = {a for a in before if before[a] != after[a]}
        assert len(changed) == 1 and changed <= attrs
        seen |= changed
        # the altered conv is carried over like every node (same op), so all are mapped ...
        assert child.node_map == {i: i for i in range(len(arch.nodes))}
        assert_node_map(space, arch, child)
        # ... and training takes what still fits: a new stride keeps the kernel, a new size or
        # channel count does not, nor do the weights of the layers that read the new channels
        inherited = assert_inherits_what_fits(arch, child, shape)
        assert (f"nodes.{k}.conv.weight" in inherited) == (name == "alter-stride")
        keys = list(build(child.arch, shape, 10).state_dict())
        consumers = [c for c in range(len(child.arch.nodes)) if k in child.arch.nodes[c].inputs
                     and child.arch.nodes[c].op in ("conv", "dense", "head")]
        if name == "alter-number-of-channels":
            # (the weight that reads the input; a consumer conv's batch norm keeps its shape and is inherited)
            reading = {f"nodes.{c}.{part}weight" for c in consumers for part in ("conv.", "linear.", "")}
            assert not reading & inherited
            # conv and batch norm are all resized (only the norm's scalar step counter still fits)
            assert all(key.endswith("num_batches_tracked") for key in inherited if key.startswith(f"nodes.{k}."))
        # every tensor of an untouched node that kept its input shapes is inherited
        plan_before, plan_after = space.validate(arch), space.validate(child.arch)
        untouched = {c for c in range(len(arch.nodes))
                     if c != k and plan_after.nodes[c].in_shapes == plan_before.nodes[c].in_shapes}
        assert all(key in inherited for key in keys if key.split(".")[0] == "nodes" and int(key.split(".")[1]) in untouched)
        if len(shape) == 2:
            assert after["kernel_h"] == 1
    assert seen == (attrs if len(shape) == 3 or name != "filter-size" else {"kernel_w"})


def test_remove_convolution_rewires_consumers():
    space = cnn((1, 8, 8))
    arch = chain(conv([], 8), conv([], 16), conv([], 8))
    child = apply_mutation("remove-convolution", space, arch, HParams(), random.Random(0))
    assert ops(child.arch) == ops(arch) - Counter(["conv"]) and len(child.arch.nodes) == len(arch.nodes) - 1
    assert all(node.inputs == (i - 1,) for i, node in enumerate(child.arch.nodes[1:], start=1))
    assert_node_map(space, arch, child)
    assert 0 in child.node_map and len(child.arch.nodes) - 1 in child.node_map  # input and head keep theirs
    # the 16-channel conv went: the last conv now reads 8 channels, so it is mapped (same op)
    # but its kernel no longer fits; its batch norm, and every other tensor, is inherited
    assert child.node_map == {0: 0, 1: 1, 2: 3, 3: 4, 4: 5}
    inherited = assert_inherits_what_fits(arch, child, (1, 8, 8))
    assert set(build(child.arch, (1, 8, 8), 10).state_dict()) - inherited == {"nodes.2.conv.weight"}


def test_one_to_one_and_skips():
    space = cnn((1, 8, 8))
    arch = chain(conv([], 8), conv([], 16))
    one = apply_mutation("insert-one-to-one", space, arch, HParams(), random.Random(1))
    assert ops(one.arch) == ops(arch) + Counter(["identity"])
    assert sorted(one.node_map.values()) == list(range(len(arch.nodes)))  # no shape changes: all inherit
    skip = apply_mutation("add-skip", space, arch, HParams(), random.Random(1))
    assert ops(skip.arch) == ops(arch) + Counter(["add"])
    new = differing(arch, skip.arch)[0]
    later, earlier = skip.arch.nodes[new].inputs
    assert later == new - 1 and earlier < later
    assert skip.arch.consumers(later) == [new]  # the later node's consumers now read the sum
    back = apply_mutation("remove-skip", space, skip.arch, HParams(), random.Random(1))
    assert back.arch == arch
    assert_node_map(space, skip.arch, back)


def test_remove_skip_refuses_a_merge_of_one_node_with_itself():
    space = cnn((1, 8, 8))
    nodes = (Node.make("input"), conv([0]), Node.make("add", [1, 0]), Node.make("add", [2, 1]),
             Node.make("global_pool", [3]), Node.make("head", [4]))
    arch = Architecture(nodes)
    for seed in range(10):
        child = apply_mutation("remove-skip", space, arch, HParams(), random.Random(seed))
        assert child.arch.nodes[2] == Node.make("add", [1, 0])  # only the second add can go


def test_not_applicable_says_why():
    mlp = SearchSpace.load("spaces/mlp.yaml").bind((20,), 10)
    arch, hparams = mlp.sample(random.Random(0))
    with pytest.raises(NotApplicable, match="no conv op"):
        apply_mutation("insert-convolution", mlp, arch, hparams, random.Random(0))
    for name in CONV_MUTATIONS[1:]:
        with pytest.raises(NotApplicable, match="no conv node"):
            apply_mutation(name, mlp, arch, hparams, random.Random(0))
    with pytest.raises(NotApplicable, match="no add or concat"):
        apply_mutation("remove-skip", mlp, arch, hparams, random.Random(0))
    with pytest.raises(NotApplicable) as info:
        mutate(mlp, arch, hparams, random.Random(0), allowed=CONV_MUTATIONS)
    assert all(f"{name}:" in str(info.value) for name in CONV_MUTATIONS)

    raw = yaml.safe_load(open("spaces/mlp.yaml"))
    del raw["ops"]["identity"], raw["ops"]["add"]
    bare = SearchSpace.from_dict(raw).bind((20,), 10)
    with pytest.raises(NotApplicable, match="no 'identity' op"):
        apply_mutation("insert-one-to-one", bare, arch, hparams, random.Random(0))
    with pytest.raises(NotApplicable, match="no 'add' op"):
        apply_mutation("add-skip", bare, arch, hparams, random.Random(0))

    space = cnn((1, 8, 8))
    no_conv = chain(Node.make("identity"))
    with pytest.raises(NotApplicable, match="no conv node"):
        apply_mutation("remove-convolution", space, no_conv, HParams(), random.Random(0))
    with pytest.raises(ValueError, match="unknown mutation"):
        apply_mutation("grow", space, no_conv, HParams(), random.Random(0))


def test_parameter_limit_is_respected():
    space = cnn((1, 8, 8))
    arch = chain(conv([], 8))
    tight = replace(space, max_params=space.validate(arch).params)  # any wider conv breaks the limit
    with pytest.raises(NotApplicable, match="max_params"):
        apply_mutation("alter-number-of-channels", tight, arch, HParams(), random.Random(0))
    full = replace(space, max_nodes=2)  # conv + global_pool: already full
    with pytest.raises(NotApplicable, match="max_nodes"):
        apply_mutation("insert-one-to-one", full, arch, HParams(), random.Random(0))
