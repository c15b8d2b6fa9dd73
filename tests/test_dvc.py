"""`dvc repro` in a temporary clone runs prepare -> search; a second repro runs nothing."""

import shutil
import subprocess
from pathlib import Path

import mlflow
import yaml

from tests.conftest import ROOT


def project_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["search"].update(trials=2, epochs=1, concurrency=1)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=dest, check=True)
    return dest


def dvc(*args, cwd):
    result = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def trial_count(project: Path) -> int:
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("digits")
    return len(client.search_runs([experiment.experiment_id], "tags.`nas.kind` = 'trial'"))


def test_dvc_repro_twice_reruns_nothing(tmp_path):
    project = project_copy(tmp_path / "clone")
    out = dvc("repro", cwd=project)
    assert "Running stage 'prepare'" in out and "Running stage 'search'" in out
    assert (project / "metrics/search.json").is_file()
    assert (project / "data/prepared/meta.json").is_file()
    assert trial_count(project) == 2

    out = dvc("repro", cwd=project)
    assert "Running stage" not in out
    assert "up to date" in dvc("status", cwd=project)
    assert trial_count(project) == 2
