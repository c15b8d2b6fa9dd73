"""The Prefect tasks: cache keys that hit when they should and miss when the files change,
and retries only for infrastructure errors."""

from pathlib import Path

from prefect import flow
from prefect.states import Failed

from flows.common import prepared_data
from nas.config import DataConfig, SearchConfig
from nas.lineage import LineageError
from nas.space import ArchitectureError
from nas.trial import TrialInterrupted
from tasks.prepare import prepare_data
from tasks.train import _infrastructure_error_only


@flow
def prepare_twice(out_dir: str) -> list[str]:
    states = [prepare_data(source="digits", out_dir=out_dir, return_state=True) for _ in range(2)]
    return [s.name for s in states]


@flow
def prepare_for_search(out_dir: str) -> str:
    return prepared_data(SearchConfig(data=DataConfig(source="digits")), Path(out_dir)).fingerprint


def test_prepare_is_cached(tmp_path, prefect_api):
    assert prepare_twice(str(tmp_path / "digits")) == ["Completed", "Cached"]


def test_the_search_prepares_again_when_the_cached_files_are_gone(tmp_path, prefect_api):
    out = tmp_path / "digits"
    fingerprint = prepare_for_search(str(out))
    (out / "meta.json").unlink()
    (out / "train.parquet").unlink()
    assert prepare_for_search(str(out)) == fingerprint
    assert (out / "meta.json").is_file() and (out / "train.parquet").is_file()


def test_only_infrastructure_errors_are_retried():
    assert _infrastructure_error_only(None, None, Failed(data=LineageError("store down")))
    assert _infrastructure_error_only(None, None, Failed(data=OSError("disk hiccup")))
    assert not _infrastructure_error_only(None, None, Failed(data=ValueError("bad option")))
    assert not _infrastructure_error_only(None, None, Failed(data=ArchitectureError("bad sentence")))
    assert not _infrastructure_error_only(None, None, Failed(data=TrialInterrupted("time limit")))
