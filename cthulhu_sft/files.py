"""Atomic file writes and digests: an output appears complete or not at all."""

import hashlib
import json
import os
import secrets
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes to a new temporary file beside `path`, then renames it over `path`."""
    temporary = write_temporary(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_temporary(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` in full (flushed to disk) to a new hidden file beside `path`, to be renamed over it.

    The file is opened normally (exclusive creation), so it gets the permissions the umask gives any new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def is_local_path(name: str) -> bool:
    """Whether a model name is a local folder (or written as a path), not a Hub id."""
    return os.path.isabs(name) or name.startswith(".") or os.path.isdir(name)


def write_json_atomic(path: str | os.PathLike, value) -> None:
    write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
