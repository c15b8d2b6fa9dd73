"""The family-tree picture, drawn from hand-built histories (no MLflow, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from nas.reports import family_tree
from nas.space.architecture import Architecture, HParams, Node
from nas.trial import FAILED, Budget, Candidate, Evaluation


def evaluation(run_id: str, units: int, val_acc: float | None = 0.5, parents: tuple[str, ...] = (),
               generation: int = 0, mutation: str | None = None, failed: bool = False) -> Evaluation:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1], units=units)))
    info = {"mutation": mutation} if mutation else {}
    candidate = Candidate(arch, HParams(), Budget(1), parents=parents, generation=generation, info=info)
    if failed:
        return Evaluation(candidate, f"key-{run_id}", status=FAILED, reason="boom", run_id=run_id)
    return Evaluation(candidate, f"key-{run_id}", val_acc=val_acc, run_id=run_id)


def assert_png(path: Path) -> np.ndarray:
    assert path.exists()
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert 1_000 < len(data) < 5_000_000
    image = imread(path)
    assert 100 <= image.shape[0] <= 2_000 and 100 <= image.shape[1] <= 3_000
    return image


def test_three_generation_tree(tmp_path: Path) -> None:
    history = [
        evaluation("r0", 10, 0.40),
        evaluation("r1", 11, 0.55),
        evaluation("r2", 12, 0.60, parents=("r0",), generation=1, mutation="widen"),
        evaluation("r3", 13, parents=("r1",), generation=1, mutation="add_conv", failed=True),
        evaluation("r4", 14, 0.70, parents=("r2", "r1"), generation=2, mutation="crossover"),
        evaluation("r5", 15, 0.65, parents=("r2",), generation=2, mutation="skip"),
    ]
    out = family_tree(history, tmp_path / "sub" / "tree.png", title="evolution")
    assert out == tmp_path / "sub" / "tree.png"
    image = assert_png(out)
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 1


def test_parentless_history_is_one_row(tmp_path: Path) -> None:
    history = [evaluation(f"r{i}", 10 + i, 0.1 * i) for i in range(5)]
    assert_png(family_tree(history, str(tmp_path / "random.png")))


def test_parents_outside_history(tmp_path: Path) -> None:
    history = [
        evaluation("c0", 20, 0.8, parents=("elsewhere-a",), generation=3, mutation="deepen"),
        evaluation("c1", 21, 0.8, parents=("elsewhere-a", "elsewhere-b"), generation=3, mutation="crossover"),
        evaluation("c2", 22, parents=("c0",), generation=4, mutation="widen", failed=True),
    ]
    assert_png(family_tree(history, tmp_path / "external.png"))


def test_empty_and_idless_runs(tmp_path: Path) -> None:
    assert_png(family_tree([], tmp_path / "empty.png"))
    assert_png(family_tree([Evaluation(evaluation("x", 10).candidate, "k")], tmp_path / "noid.png"))
