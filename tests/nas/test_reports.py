"""The report pictures and their data rows, drawn from hand-built histories (no MLflow, no training)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from nas.reports import (
    PARETO_COLUMNS,
    TRAJECTORY_COLUMNS,
    family_tree,
    pareto_front,
    pareto_plot,
    pareto_rows,
    trajectory_plot,
    trajectory_rows,
    write_csv,
)
from nas.space.architecture import Architecture, HParams, Node
from nas.trial import Budget, Candidate, Evaluation, TrialStatus


def evaluation(run_id: str, units: int, val_acc: float | None = 0.5, parents: tuple[str, ...] = (),
               generation: int = 0, mutation: str | None = None, failed: bool = False) -> Evaluation:
    arch = Architecture((Node.make("input"), Node.make("flatten", [0]), Node.make("head", [1], units=units)))
    info = {"mutation": mutation} if mutation else {}
    candidate = Candidate(arch, HParams(), Budget(1), parents=parents, generation=generation, info=info)
    if failed:
        return Evaluation(candidate, f"key-{run_id}", status=TrialStatus.FAILED, reason="boom", run_id=run_id)
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


# Trajectory and Pareto reports: the rows behind the CSVs, then the pictures.

def scored(run_id: str, params: int, val_acc: float | None, failed: bool = False) -> Evaluation:
    e = evaluation(run_id, units=params, val_acc=val_acc, failed=failed)
    e.params = params
    return e


def small_history() -> list[Evaluation]:
    return [
        scored("a", 1_000, None, failed=True),
        scored("b", 5_000, 0.50),
        scored("c", 2_000, 0.40),
        scored("d", 8_000, None, failed=True),
        scored("e", 20_000, 0.70),
        scored("f", 5_000, 0.50),  # duplicate of b: only b stays on the front
        scored("g", 30_000, 0.65),  # dominated by e (more params, less accurate)
        scored("h", 9_000, 0.60),
    ]


def test_trajectory_rows() -> None:
    rows = trajectory_rows(small_history())
    assert [r["trial"] for r in rows] == list(range(1, 9))
    assert [r["val_acc"] for r in rows] == [None, 0.50, 0.40, None, 0.70, 0.50, 0.65, 0.60]
    assert [r["best_val_acc"] for r in rows] == [None, 0.50, 0.50, 0.50, 0.70, 0.70, 0.70, 0.70]
    best = [r["best_val_acc"] for r in rows if r["best_val_acc"] is not None]
    assert best == sorted(best)
    assert trajectory_rows([]) == []


def test_pareto_rows_and_front() -> None:
    rows = pareto_rows(small_history())
    assert [r["run_id"] for r in rows] == ["b", "c", "e", "f", "g", "h"]  # finished only, in order
    assert {r["run_id"] for r in rows if r["pareto"]} == {"c", "b", "h", "e"}
    assert rows[0] == {"run_id": "b", "arch_id": rows[0]["arch_id"], "params": 5_000, "val_acc": 0.50,
                       "pareto": True}
    assert pareto_front([(5, 0.5), (2, 0.4), (20, 0.7), (5, 0.5), (30, 0.65), (9, 0.6)]) == [1, 0, 5, 2]
    assert pareto_front([(10, 0.5), (10, 0.6), (12, 0.6)]) == [1]  # same params, or same accuracy
    assert pareto_front([]) == []
    assert pareto_rows([scored("x", 10, None, failed=True)]) == []


def test_plots(tmp_path: Path) -> None:
    history = small_history()
    for draw in (trajectory_plot, pareto_plot):
        out = draw(history, tmp_path / "plots" / f"{draw.__name__}.png", title="search")
        assert out == tmp_path / "plots" / f"{draw.__name__}.png"
        image = assert_png(out)
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 2
        again = draw(history, tmp_path / f"again-{draw.__name__}.png", title="search")
        assert again.read_bytes() == out.read_bytes()  # deterministic


def test_plots_without_successes(tmp_path: Path) -> None:
    failures = [scored(f"x{i}", 10, None, failed=True) for i in range(3)]
    unmeasured = [evaluation("u", 10, 0.5)]  # params 0 cannot sit on a log axis
    for draw in (trajectory_plot, pareto_plot):
        for name, history in (("empty", []), ("failed", failures), ("unmeasured", unmeasured)):
            assert_png(draw(history, tmp_path / f"{draw.__name__}-{name}.png"))


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = pareto_rows(small_history())
    out = write_csv(rows, tmp_path / "deep" / "pareto.csv", PARETO_COLUMNS)
    with out.open(newline="") as f:
        read = list(csv.DictReader(f))
    assert read == [{k: str(v) for k, v in r.items()} for r in rows]

    traj = write_csv(trajectory_rows(small_history()), tmp_path / "traj.csv", TRAJECTORY_COLUMNS)
    assert traj.read_text().splitlines()[:2] == ["trial,val_acc,best_val_acc", "1,,"]  # None: empty cell

    empty = write_csv([], tmp_path / "empty.csv", PARETO_COLUMNS)
    assert empty.read_text() == "run_id,arch_id,params,val_acc,pareto\n"
