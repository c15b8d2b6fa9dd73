"""The tabular benchmark: a tiny table built for real (4 networks, 1 and 2 epochs), then looked up."""

import json
from dataclasses import replace

import pytest
import yaml

from nas.benchmark import BenchmarkError, BenchmarkMeta, BenchmarkTable, build_rows, networks, read_rows, write_table
from nas.space import Architecture, ArchitectureError
from nas.strategies.base import proposal_key
from nas.trial import Budget, Candidate, TrialStatus
from tests.conftest import ROOT

TINY = yaml.safe_load((ROOT / "spaces/bench-mnist1d.yaml").read_text())
TINY["ops"]["conv"].update(channels=[8], kernel_w=[3, 5])
TINY["layout"].update(conv_blocks=[1], reduce=["global_pool"], dense_layers=[0])


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    from nas.data import prepare
    from nas.train import load_data

    folder = tmp_path_factory.mktemp("bench")
    data = prepare("mnist1d", folder / "data")
    meta = BenchmarkMeta(space=TINY, data="mnist1d", data_fingerprint=data.fingerprint, shape=data.shape,
                         classes=len(data.classes), fidelities=(1, 2), seeds=(0,))
    space = meta.bound_space()
    rows = list(build_rows(space, networks(space), load_data(folder / "data", "cpu"), meta.fidelities, 0))
    write_table(rows, meta, folder / "tiny.parquet")
    return folder / "tiny.parquet"


@pytest.fixture(scope="module")
def table(table_path):
    return BenchmarkTable(table_path)


def test_the_grid_is_trained_at_every_fidelity(table):
    assert len(table) == 4 and len(table.rows) == 8
    assert all(r["status"] == "ok" and r["test_acc"] is not None for r in table.rows.values())


def test_a_shorter_budget_is_a_prefix_of_the_longer_run(table):
    # What lets a lookup answer any budget from the longest run's curve.
    for (key, fidelity, seed), row in table.rows.items():
        if fidelity == 1:
            longer = table.rows[(key, 2, seed)]
            assert longer["val_curve"][0] == pytest.approx(row["val_acc"])
            assert longer["seconds"] > row["seconds"]


def test_lookups_reproduce_the_stored_numbers(table):
    for arch, hparams in networks(table.space):
        for fidelity in (1, 2):
            found = table.lookup(Candidate(arch, hparams, Budget(fidelity)))
            row = next(r for (k, f, _), r in table.rows.items() if f == fidelity and r["arch_id"] == arch.arch_id)
            assert found.ok and (found.val_acc, found.test_acc, found.params) == \
                (row["val_acc"], row["test_acc"], row["params"])
            assert found.val_accs == row["val_curve"][:fidelity]


def test_what_the_table_cannot_answer_fails_and_says_why(table):
    arch, hparams = networks(table.space)[0]
    longer = table.lookup(Candidate(arch, hparams, Budget(3)))
    other = Architecture.from_json({**arch.to_json(), "nodes": arch.to_json()["nodes"][:1] + [
        {"op": "flatten", "attrs": {}, "inputs": [0]}, arch.to_json()["nodes"][-1] | {"inputs": [1]}]})
    outside = table.lookup(Candidate(other, hparams, Budget(2)))
    for found in (longer, outside):
        assert found.status == TrialStatus.FAILED and "not in the benchmark table" in found.reason
    untrained = table.lookup(Candidate(arch, replace(hparams, lr=0.5), Budget(2)))
    assert not untrained.ok
    with pytest.raises(ArchitectureError, match="not one of the 4 networks"):
        table.space.validate(other)  # so no strategy proposes it


def test_mutations_stay_inside_the_table(table):
    # Mutating a 1-block net may add a block or a dense layer, valid in the language but not in
    # the grid: the table's space refuses such children, so no trial is spent on a failed lookup.
    # Aging evolution trains no network twice: each of the 4 once, then the table is exhausted.
    outcome = table.search("aging-evolution", trials=12, population=3)
    assert all(e.ok for e in outcome.evaluations)
    assert len({e.candidate.arch.arch_id for e in outcome.evaluations}) == len(outcome.evaluations) == 4
    assert "exhausted" in outcome.stop_reason


@pytest.mark.parametrize("options", [{}, {"scheduler": "hyperband", "min_epochs": 1, "eta": 2},
                                     {"asynchronous": True, "concurrency": 2}])
def test_a_benchmark_search_is_deterministic_per_seed(table, options):
    def run(seed):
        outcome = table.search("random", seed=seed, trials=4, **options)
        return [(e.arch_id, e.candidate.budget.epochs, e.val_acc) for e in outcome.evaluations]
    assert run(0) == run(0)
    assert len(run(0)) == 4


def test_regret_falls_to_zero_once_the_best_network_is_found(table):
    outcome = table.search("grid", trials=4)
    curve = table.regret_curve(outcome.evaluations)
    assert curve == sorted(curve, reverse=True) and len(curve) == 4
    best = max(outcome.evaluations, key=lambda e: e.rank_key)
    assert curve[-1] == pytest.approx(table.best() - table.score_of(best))
    val = table.regret_curve(outcome.evaluations, on="val")
    assert val[-1] == pytest.approx(0.0) and val == sorted(val, reverse=True)  # a full grid finds the top


def test_a_table_of_two_seeds_answers_each_search_seed_and_scores_their_mean(table_path, tmp_path):
    from nas.train import load_data

    meta, rows = read_rows(table_path)
    space = meta.bound_space()
    rows += build_rows(space, networks(space), load_data(table_path.parent / "data", "cpu"), meta.fidelities, 1)
    write_table(rows, replace(meta, seeds=(0, 1)), tmp_path / "two.parquet")
    two = BenchmarkTable(tmp_path / "two.parquet")
    arch, hparams = networks(space)[0]
    key = proposal_key(arch, hparams)
    found = [two.lookup(Candidate(arch, hparams, Budget(2)), seed) for seed in (0, 1, 2)]
    assert [e.test_acc for e in found] == [two.rows[(key, 2, seed)]["test_acc"] for seed in (0, 1, 0)]
    assert found[0].test_acc != found[1].test_acc  # else the mean below proves nothing
    assert two.score_of(found[0]) == pytest.approx((found[0].test_acc + found[1].test_acc) / 2)
    assert two.best() == max(two.scores().values()) and len(two.scores("val")) == 4
    for seed in (0, 1):  # a full grid finds the validation optimum of the seed it sees, and sits on the floor
        grid = two.search("grid", seed=seed, trials=4).evaluations
        assert two.regret_curve(grid, "val", seed)[-1] == 0.0
        assert two.regret_curve(grid, "test", seed)[-1] == pytest.approx(two.floor(seed))
        assert two.floor(seed) == pytest.approx(two.best() - two.score_of(max(grid, key=lambda e: e.rank_key)))
    assert two.seen_val(0) != two.seen_val(1)


@pytest.mark.parametrize("strategy, says", [("smash", "does not hold"), ("evolution", "simplest network")])
def test_a_strategy_the_table_cannot_serve_is_refused_before_it_runs(table, strategy, says):
    # SMASH needs the data; large-scale evolution starts from a network outside the grid.
    with pytest.raises(BenchmarkError, match=says):
        table.search(strategy, trials=4)


def test_a_file_that_is_not_a_table_is_refused_with_the_fix(tmp_path):
    with pytest.raises(BenchmarkError, match="nas bench build"):
        BenchmarkTable(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(BenchmarkError, match="not a benchmark table"):
        BenchmarkTable(tmp_path / "bad.parquet")


def test_search_benchmark_from_the_cli(table_path, tmp_path):
    from nas.cli import main

    out = tmp_path / "summary.json"
    assert main(["search", "--benchmark", str(table_path), "--strategy", "aging-evolution", "--trials", "6",
                 "--population", "3", "--metrics-out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["trials"] <= 6 and summary["regret"] >= 0 and summary["best_val_acc"] > 0.1
    assert summary["regret_floor"] == pytest.approx(BenchmarkTable(table_path).floor(0))
    assert main(["search", "--benchmark", str(tmp_path / "none.parquet")]) == 2
    assert main(["search", "--benchmark", str(table_path), "--strategy", "aging-evolution", "--population", "2",
                 "--metrics-out", str(out)]) == 2  # a tournament of 3 in a population of 2: said, no traceback
