"""Atomic replacement: a failed write keeps the old file and leaves no temporary behind."""

import pytest

from hardctl.atomic import atomic_path


def test_success_replaces_and_failure_keeps_the_old_content(tmp_path):
    target = tmp_path / "config.toml"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
