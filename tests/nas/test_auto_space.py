"""`--space auto` and the signal view: a space chosen from the data's shape, convolutions over flat features."""

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from nas.build import build
from nas.space import Architecture, ArchitectureError, Node, SearchSpace, SpaceError, infer
from nas.space.auto import resolve_space, sequence_hint

FLAT = (40,)


def flat_space(features=40):
    return SearchSpace.load(resolve_space("auto", (features,))[0]).bind((features,), 10)


def convs(arch):
    return sum(n.op == "conv" for n in arch.nodes)


@pytest.mark.parametrize("shape, file, words", [
    ((1, 8, 8), "small-cnn.yaml", "images of 1x8x8"),
    ((3, 32, 32), "cnn.yaml", "images of 3x32x32"),
    ((1, 40), "conv1d.yaml", "signals of 1 channel x 40 points"),
    ((40,), "flat.yaml", "flat vectors of 40 features"),
])
def test_auto_resolves_by_shape_to_a_file_that_binds_and_samples(shape, file, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the path must work from any working directory
    path, note = resolve_space("auto", shape)
    assert Path(path).is_absolute() and Path(path).name == file
    assert note.startswith(f"space auto: {words} -> spaces/{file} (")
    space = SearchSpace.load(path).bind(shape, 10)
    arch, hparams = space.sample(random.Random(0))
    space.validate(arch, hparams)


def test_auto_note_for_flat_data_reads_as_the_user_sees_it():
    assert resolve_space("auto", FLAT)[1] == ("space auto: flat vectors of 40 features -> spaces/flat.yaml "
                                              "(perceptrons and 1-D convolutions over the features)")


@pytest.mark.parametrize("file", ["spaces/cnn.yaml", "spaces/small-cnn.yaml"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_image_spaces_bind_and_sample_on_small_and_large_images(file, shape):
    space = SearchSpace.load(file).bind(shape, 10)
    for seed in range(10):
        space.validate(*space.sample(random.Random(seed)))


def test_an_explicit_path_is_kept_and_other_shapes_are_refused():
    assert resolve_space("spaces/mlp.yaml", FLAT) == ("spaces/mlp.yaml", "space spaces/mlp.yaml")
    with pytest.raises(SpaceError, match="--space"):
        resolve_space("auto", (1, 2, 8, 8))


def test_sequence_hint():
    columns = [f"x{i}" for i in range(40)]
    assert sequence_hint(columns) == ("the columns x0..x39 look like a sequence; --shape 1,40 searches "
                                      "1-D convolutions over it directly")
    assert "f_1..f_40" in sequence_hint([f"f_{i}" for i in range(1, 41)])
    assert sequence_hint(["mean radius", "mean texture", "worst area"]) is None
    assert sequence_hint(["x0"]) is None
    assert sequence_hint(["x0", "x1", "x3"]) is None  # not consecutive
    assert sequence_hint(["x0", "y1", "x2"]) is None  # no common prefix
    assert resolve_space("auto", FLAT, columns)[1].endswith("; " + sequence_hint(columns))
    assert "--shape" not in resolve_space("auto", (1, 40), columns)[1]  # a signal already


def test_flat_space_samples_perceptrons_and_conv_nets_that_build_and_run():
    space, rng = flat_space(), random.Random(0)
    samples = [space.sample(rng)[0] for _ in range(1000)]
    depths = Counter(convs(a) for a in samples)
    assert set(depths) == {0, 1, 2, 3} and depths[0] >= 200, depths  # conv_blocks {int: [0, 3]}, drawn uniformly
    perceptron = next(a for a in samples if not convs(a))
    conv_net = next(a for a in samples if convs(a))
    assert not any(n.op == "signal" for n in perceptron.nodes)
    assert conv_net.nodes[1].op == "signal" and conv_net.nodes[2].op == "conv"
    for arch in (perceptron, conv_net):
        net = build(arch, FLAT, 10)
        assert net(torch.randn(2, *FLAT)).shape == (2, 10)
        assert sum(p.numel() for p in net.parameters()) == net.plan.params


def test_signal_view_round_trips_through_tokens_and_encodes():
    space, rng = flat_space(), random.Random(1)
    arch, hparams = next(s for s in (space.sample(rng) for _ in range(50)) if convs(s[0]))
    tokens = space.to_tokens(arch, hparams)
    assert tokens[0] == "signal" and "signal" in space.vocabulary()
    assert space.from_tokens(tokens) == (arch, hparams)
    vector = space.encode(arch, hparams)
    assert len(vector) == space.encoding_size and all(0.0 <= v <= 1.0 for v in vector)


def test_signal_is_a_free_view_of_flat_data_only():
    view = Architecture((Node.make("input"), Node.make("signal", [0]), Node.make("flatten", [1]),
                         Node.make("head", [2])))
    plan = infer(view, (30,), 2)
    assert plan.nodes[1].out_shape == (1, 30) and plan.nodes[1].params == 0
    with pytest.raises(ArchitectureError, match="node 1 .*flat data only"):
        infer(view, (1, 30), 2)
    no_view = Architecture((Node.make("input"), Node.make("global_pool", [0]), Node.make("head", [1])))
    with pytest.raises(ArchitectureError, match="signal node"):
        infer(no_view, (30,), 2)


def test_grid_holds_perceptrons_and_conv_nets_over_the_features():
    space = SearchSpace.from_dict({
        "ops": {"signal": {}, "flatten": {}, "global_pool": {},
                "conv": {"channels": [4], "kernel_h": [1], "kernel_w": [3], "stride": [1], "batch_norm": [False],
                         "activation": ["relu"]}},
        "layout": {"conv_blocks": {"int": [0, 1]}, "reduce": ["flatten", "global_pool"]},
    }).bind((6,), 2)
    points = list(space.enumerate())
    assert len(points) == space.grid_size() == 3  # perceptron (flatten only), conv + flatten, conv + global_pool
    assert [convs(a) for a, _ in points] == [0, 1, 1]
    assert all(a.nodes[1].op == "signal" for a, _ in points[1:])
