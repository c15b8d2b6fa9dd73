"""`dvc repro` in a temporary clone: prepare -> search -> refine -> evaluate, and only what changed reruns."""

import json
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
    params["refine"].update(top_k=1, trials=1, hparams={"lr": [3.0e-3], "epochs": [2]}, ensemble=1)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=dest, check=True)
    return dest


def dvc(*args, cwd, env):
    result = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def ran(output: str) -> set[str]:
    return {stage for stage in ("prepare", "search", "refine", "evaluate") if f"Running stage '{stage}'" in output}


def runs(project: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("digits")
    return client.search_runs([experiment.experiment_id], "tags.`nas.kind` != 'search'")


def test_dvc_repro_runs_the_pipeline_and_reruns_only_what_changed(tmp_path, prefect_server):
    project = project_copy(tmp_path / "clone")
    assert ran(dvc("repro", cwd=project, env=prefect_server)) == {"prepare", "search", "refine", "evaluate"}
    final = json.loads((project / "metrics/final.json").read_text())
    assert 0 < final["test_acc"] <= 1 and final["registered_uri"] == "models:/nas-digits/1"
    first_runs = runs(project)
    assert len(first_runs) == 2 + 1 + 1  # search trials, a refinement, the final model
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    prepared = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    for run in first_runs:  # provenance: the exact prepared data and code
        assert run.data.tags["dvc.data/prepared"] == prepared
        assert run.data.tags["mlflow.source.git.commit"] == commit

    assert ran(dvc("repro", cwd=project, env=prefect_server)) == set()
    # the pipeline; bench/dvc.yaml is its own
    assert "up to date" in dvc("status", "dvc.yaml", cwd=project, env=prefect_server)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["refine"]["hparams"]["epochs"] = [3]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran(dvc("repro", cwd=project, env=prefect_server)) == {"refine", "evaluate"}
    assert json.loads((project / "metrics/final.json").read_text())["model_version"] == "2"

    shown = json.loads(dvc("plots", "show", "--json", cwd=project, env=prefect_server))
    assert not shown.get("errors")
    plots = shown["data"]
    for name in ("best validation accuracy over trials", "validation accuracy against parameters, Pareto front marked"):
        assert plots[name] and plots[name][0]["type"] == "vega"
