"""Atomic writes: complete or absent, with the permissions any new file gets."""

import os
import stat

import pytest

from cthulhu_sft.files import write_text_atomic


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
