"""Where a run came from: the git commit and the DVC-tracked inputs it saw, as MLflow tags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

DVC_LOCK = "dvc.lock"


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def dvc_lock_hashes(root: Path) -> dict[str, str]:
    """The md5 of every dependency and output that dvc.lock records, by path.

    Under `dvc repro` the lock already holds the earlier stages' outputs, so a stage's
    runs name the exact prepared data (and search results) they used.
    """
    path = root / DVC_LOCK
    if not path.is_file():
        return {}
    try:
        lock = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}  # a half-written lock must not stop a search; the commit still identifies the code
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for entry in (stage.get("deps") or []) + (stage.get("outs") or []):
            if isinstance(entry, dict) and entry.get("md5"):
                hashes[entry["path"]] = entry["md5"]
    return hashes


def provenance_tags(root: Path) -> dict[str, str]:
    tags = {f"dvc.{path}": md5 for path, md5 in sorted(dvc_lock_hashes(root).items())}
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit
    return tags
