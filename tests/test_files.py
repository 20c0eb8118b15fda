"""Atomic writes: complete or absent, with the permissions any new file gets, naming the file when they fail;
one run at a time per folder."""

import errno
import json
import os
import socket
import stat

import pytest

from cthulhu_sft.files import Busy, one_run_at_a_time, os_error_message, write_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "new" / "card.md", "text")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new" / "card.md").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "half written \ud800")  # a lone surrogate fails in the middle of the write
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json"]


def test_a_second_holder_of_a_folder_is_refused_with_who_holds_it_and_the_lock_is_freed_after(tmp_path):
    with one_run_at_a_time(tmp_path / "cache", "--cache_dir"):
        owner = json.loads((tmp_path / "cache" / ".lock.owner").read_text(encoding="utf-8"))
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(Busy, match=rf"in use by another run \(pid {os.getpid()} on .*, started 20\d\d-.*pass another --cache_dir"):
            with one_run_at_a_time(tmp_path / "cache", "--cache_dir"):
                pass
    with one_run_at_a_time(tmp_path / "cache", "--cache_dir"):  # released
        pass
    assert not (tmp_path / "cache" / ".lock.owner").exists()


def test_a_failed_write_names_the_file_being_written(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as error:
        write_text_atomic(tmp_path / "train.jsonl", "rows")
    assert os_error_message(error.value) == f"{tmp_path / 'train.jsonl'}: No space left on device"
    assert list(tmp_path.iterdir()) == []
