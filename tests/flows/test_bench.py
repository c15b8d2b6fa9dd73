"""`nas bench build` end to end: the flow on a real Prefect API, real training of a 4-network grid."""

import os

import yaml

from nas.benchmark import BenchmarkTable
from nas.cli import main
from tests.conftest import ROOT


def test_bench_build_writes_the_table_resumes_at_the_missing_part_and_adds_seeds(tmp_path, prefect_api, monkeypatch):
    space = yaml.safe_load((ROOT / "spaces/bench-mnist1d.yaml").read_text())
    space["ops"]["conv"].update(channels=[8], kernel_w=[3, 5])
    space["layout"].update(conv_blocks=[1], reduce=["global_pool"], dense_layers=[0])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.chdir(tmp_path)
    command = ["bench", "build", "--space", "tiny.yaml", "--fidelities", "1,2", "--seeds", "0", "--out", "t.parquet"]
    with monkeypatch.context() as patch:
        patch.setattr("flows.bench.PART_SIZE", 2)
        assert main(command) == 0
        table = BenchmarkTable("t.parquet")
        assert len(table) == 4 and table.top == 2 and table.meta.data == "mnist1d"

        parts = sorted((tmp_path / ".t.parquet.parts").glob("*/*.parquet"))
        assert len(parts) == 2
        kept = parts[0].stat().st_mtime_ns
        parts[1].unlink()  # as if killed while training the second part, before the table was written
        os.remove("t.parquet")
        assert main(command) == 0
        assert parts[0].stat().st_mtime_ns == kept and parts[1].exists()
        again = BenchmarkTable("t.parquet").rows
        assert again.keys() == table.rows.keys()
        for key, row in table.rows.items():  # deterministic on CPU: the same numbers again, but the times
            assert {**again[key], "seconds": 0} == {**row, "seconds": 0}

        assert main([*command[:-4], "--seeds", "0,1", "--out", "t.parquet"]) == 0  # trains seed 1 alone
        two = BenchmarkTable("t.parquet")
        assert two.meta.seeds == (0, 1) and len(two) == 4 and len(two.rows) == 16
        assert {k: r for k, r in two.rows.items() if k[2] == 0} == again  # kept as they were, times included
        assert len(list((tmp_path / ".t.parquet.parts").glob("*/seed1-*.parquet"))) == 2
    assert main(["bench", "build", "--space", "tiny.yaml", "--fidelities", "0,2"]) == 2
    assert main(["bench", "build", "--space", "missing.yaml"]) == 2
    assert not os.path.exists("bench")
