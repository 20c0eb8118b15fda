"""Atomic file writes, digests and one-run-at-a-time locks: an output appears complete or not at all."""

import hashlib
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class Busy(RuntimeError):
    """Another run holds the folder's lock."""


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
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk's error names no file: name the one being written
            error.filename, error.filename2 = str(path), None
        raise
    return temporary


def remove_stale_temporaries(root: str | os.PathLike) -> None:
    """Removes the temporary files (`.NAME.PID-HEX.tmp`, as write_temporary names them) that a killed run left in
    root's subfolders; a file whose process still runs is another run's write in flight and is left alone."""
    for temporary in Path(root).glob("*/.*.tmp"):
        if not _being_written(temporary):
            temporary.unlink(missing_ok=True)


def _being_written(temporary: Path) -> bool:
    match = re.search(r"\.(\d+)-[0-9a-f]+\.tmp$", temporary.name)
    if not match or int(match.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def os_error_message(error: OSError) -> str:
    """One line for a failed read or write: the path and the system's reason ('No space left on device')."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


@contextmanager
def one_run_at_a_time(folder: str | os.PathLike, option: str) -> Iterator[None]:
    """Holds `folder`/.lock while the block runs; a second run raises Busy, naming the run that holds it.

    The lock is filelock's (flock on Linux: the system releases it when its process ends, even killed). Who holds
    it (pid, host, start time, command) is written beside it in .lock.owner; `option` is what to change instead.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(folder / ".lock", timeout=0), folder / ".lock.owner"
    try:
        lock.acquire()
    except Timeout:
        raise Busy(f"{folder} is in use by another run ({_holder(owner)}); wait for it to end, or pass another "
                   f"{option} (if no such run is alive, delete {folder / '.lock'})") from None
    try:
        write_json_atomic(owner, {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _holder(owner: Path) -> str:
    try:
        holder = json.loads(owner.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"who holds it is not written in {owner} yet"
