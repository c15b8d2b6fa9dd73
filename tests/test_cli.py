"""The `nas` command as a user runs it: help, fast read-only commands, clear errors."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def nas(*args, cwd=ROOT, timeout=120):
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", [[], ["search"], ["prepare"], ["refine"], ["evaluate"], ["pipeline"], ["report"],
                                     ["runs"], ["show"], ["ui"], ["server"]])
def test_help_explains_every_option(command):
    result = nas(*command, "--help")
    assert result.returncode == 0
    if command == ["search"]:
        for option in ["--data", "--space", "--strategy", "--trials", "--epochs", "--seed", "--experiment",
                       "--tracking-uri", "--concurrency"]:
            assert option in result.stdout


def test_runs_on_an_empty_store_says_so(tmp_path):
    result = nas("runs", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--experiment", "none")
    assert result.returncode == 0, result.stderr
    assert "no finished trials" in result.stdout


LOADED_BY = """
import contextlib, sys
from nas import cli
with contextlib.suppress(SystemExit):  # --help exits once it has printed
    cli.main(sys.argv[1:])
print(sorted(m for m in ("torch", "prefect", "sklearn") if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["--help", "search --help",
                                     "runs --experiment none --tracking-uri sqlite:///{tmp}/m.db"])
def test_quick_commands_import_neither_torch_nor_prefect(tmp_path, command):
    """What keeps them within 3 s (bench/cli_latency.py times them): torch and Prefect take seconds to import."""
    result = subprocess.run([sys.executable, "-c", LOADED_BY, *command.format(tmp=tmp_path).split()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_prepare_writes_splits_and_reports(tmp_path):
    result = nas("prepare", "--data", "digits", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    assert "1149/288/360" in result.stdout
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["shape"] == [1, 8, 8]


def test_bad_input_gets_one_clear_message_and_exit_code_2(tmp_path):
    result = nas("prepare", "--data", str(tmp_path / "missing.parquet"))
    assert result.returncode == 2
    assert "missing.parquet" in result.stderr and "Traceback" not in result.stderr
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("ops: {swirl: {}}\nlayout: {reduce: [flatten]}\n")
    result = nas("search", "--space", str(bad_space), "--data-dir", str(tmp_path / "d2"),
                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.returncode == 2
    assert "unknown op 'swirl'" in result.stderr and "Traceback" not in result.stderr


def test_show_unknown_run_names_the_id(tmp_path):
    result = nas("show", "0123456789abcdef", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.returncode == 2
    assert "0123456789abcdef" in result.stderr and "nas runs" in result.stderr


@pytest.mark.parametrize("command, says", [
    (["refine", "--tracking-uri", "sqlite:///m.db"], "has no search to refine"),
    (["refine", "--search-run", "0123456789abcdef", "--tracking-uri", "sqlite:///m.db"], "0123456789abcdef"),
    (["evaluate", "--from-summary", "missing.json"], "run `nas refine` first"),
    (["search", "--scheduler", "hyperband", "--epochs", "3", "--min-epochs", "9", "--space",
      str(ROOT / "spaces/small-cnn.yaml")], "--min-epochs 9 exceeds"),
])
def test_pipeline_steps_out_of_order_say_what_to_run(tmp_path, command, says):
    result = nas(*command, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
