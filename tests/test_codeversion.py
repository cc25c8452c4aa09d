"""Which code made a result (hardctl/codeversion.py): a git checkout, a `git archive` export, neither."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from hardctl.codeversion import ARCHIVE_COMMIT, archive_commit

REPO = Path(__file__).resolve().parent.parent


def test_a_checkouts_placeholder_is_no_commit(tmp_path):
    assert ARCHIVE_COMMIT.read_text().strip() == "$Format:%H$"  # expanded only by git archive
    assert archive_commit(ARCHIVE_COMMIT) is None
    assert archive_commit(tmp_path / "missing") is None
    (tmp_path / "bad").write_text("not a commit\n")
    assert archive_commit(tmp_path / "bad") is None


def test_git_archive_writes_the_commit_into_the_export(tmp_path):
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(tmp_path / "tree.tar"), "HEAD",
                        "hardctl/ARCHIVE_COMMIT"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    with tarfile.open(tmp_path / "tree.tar") as tar:
        tar.extractall(tmp_path / "tree", filter="data")
    assert archive_commit(tmp_path / "tree" / "hardctl" / "ARCHIVE_COMMIT") == head
