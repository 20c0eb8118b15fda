"""run.json: what a training run used and produced, so two runs can be compared and an adapter traced to its data."""

import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .files import sha256_file

PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "huggingface_hub")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def git_commit(folder: str | Path) -> str | None:
    """The checkout's commit, with "-dirty" when tracked files have uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def data_file_entry(path: str, total: int, kept: int, dropped_lines: list[int]) -> dict:
    return {
        "path": path,
        "sha256": sha256_file(path),
        "examples": total,
        "kept": kept,
        "dropped_too_long": len(dropped_lines),
        "dropped_lines": dropped_lines,
    }
