"""Issue 11, data loss: what hardctl may delete (--force), one writer per run directory (the lock), checkpoints
that survive a full disk and a kill between renames, and a plugin that calls sys.exit()."""

from __future__ import annotations

import errno
import importlib.metadata as md
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hardctl import atomic, dirlock, hookimpl, plugins
from hardctl.config import RunConfig
from hardctl.distill import rundir
from hardctl.distill.run import run
from hardctl.dirlock import DirLock
from hardctl.errors import UsageError

TINY = ["--model", "mlp", "--data", "digits", "--epochs", "1", "--batch-size", "256"]


def train(cli, out: Path, *extra):
    return cli("train", *TINY, "--out", out, *extra)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: what must not change when hardctl refuses."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(result, code: int) -> str:
    assert result.code == code, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hardctl: error: "), result.err
    return lines[0]


def epoch_of(weights: Path) -> str:
    with safe_open(str(weights), framework="pt") as handle:
        return handle.metadata()["epoch"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch run, copied by the tests that need one (training it once keeps them fast)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run(RunConfig(command="train", data="digits", model="mlp", epochs=1, batch_size=256), out)
    return out


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


# ------------------------------------------------------------------------------------------------ --force
def test_force_never_deletes_a_folder_hardctl_did_not_make(cli, tmp_path):
    """The issue's reproduction: a project folder that happens to hold a config.toml."""
    project = tmp_path / "p"
    (project / "src").mkdir(parents=True)
    (project / "config.toml").write_text('title="x"\n')
    (project / "src" / "important.txt").write_text("precious")
    before = snapshot(project)
    line = error_line(train(cli, project, "--force"), 2)
    assert f"--force refuses to replace {project}: it is not a hardctl run directory" in line
    assert snapshot(project) == before and sorted(p.name for p in project.iterdir()) == ["config.toml", "src"]


def test_force_refuses_a_run_directory_holding_foreign_files(cli, tmp_path, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    (out / "exports").mkdir()
    (out / "exports" / "student.onnx").write_text("a deployed model")
    (out / "notes.txt").write_text("my notes")
    (out / "checkpoints" / "epoch-1-keep.pt").write_text("copied by hand")
    before = snapshot(out)
    line = error_line(train(cli, out, "--force"), 2)
    assert f"it holds {out / 'checkpoints' / 'epoch-1-keep.pt'} (and 2 more), which hardctl did not write" in line
    assert snapshot(out) == before
    assert rundir.foreign_entries(out) == [out / "checkpoints" / "epoch-1-keep.pt", out / "exports", out / "notes.txt"]


def test_force_replaces_a_run_and_only_its_own_files(cli, tmp_path, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    for own in ("eval.json", "phases.png", ".model.safetensors.123.tmp", ".hardctl-write-test-9"):
        (out / own).write_text("left by hardctl")
    (out / "checkpoints" / ".last.pt.4242.tmp").write_bytes(b"torn")
    assert rundir.foreign_entries(out) == []
    old_config = (out / "config.toml").read_text()
    result = train(cli, out, "--force", "--seed", "7")
    assert result.code == 0, result.err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([".hardctl-lock", ".hardctl-run", "best.safetensors", "checkpoints", "config.toml",
                            "epochs.jsonl", "last.safetensors", "log.txt", "model.safetensors", "steps.jsonl",
                            "summary.json"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert (out / "config.toml").read_text() != old_config and "seed = 7" in (out / "config.toml").read_text()
    assert len(rundir.read_jsonl(out / "epochs.jsonl")) == 1  # the old run's log went, not appended to


def test_runs_of_older_versions_without_the_marker(cli, tmp_path, finished_run):
    """Before the marker: a config.toml beside steps.jsonl or checkpoints/, and nothing else, is a run."""
    out = copy_run(finished_run, tmp_path / "run")
    (out / ".hardctl-run").unlink()
    (out / ".hardctl-lock").unlink()
    assert rundir.is_run_dir(out)
    assert train(cli, out, "--force").code == 0
    assert (out / ".hardctl-run").is_file()  # from now on it carries the marker
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "config.toml").write_text('title="x"\n')
    (lookalike / "log.txt").write_text("a user's log")
    assert not rundir.is_run_dir(lookalike)
    assert "not a hardctl run directory" in error_line(train(cli, lookalike, "--force"), 2)
    assert (lookalike / "log.txt").read_text() == "a user's log"


def test_symlinks_are_never_hardctls(tmp_path, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "augmentors").symlink_to(elsewhere)
    (out / "checkpoints" / "best.pt").unlink()
    (out / "checkpoints" / "best.pt").symlink_to(elsewhere / "x")
    assert rundir.foreign_entries(out) == [out / "augmentors", out / "checkpoints" / "best.pt"]


# ------------------------------------------------------------------------------------------------ the lock
@pytest.mark.parametrize("how, then", [([], 2), (["--force"], 0), (["--resume"], 0)])
def test_a_run_directory_in_use_is_refused(cli, tmp_path, finished_run, how, then):
    out = copy_run(finished_run, tmp_path / "run")
    (out / "summary.json").unlink()  # so that --resume has something to do
    args = ["train", "--resume", out] if how == ["--resume"] else ["train", *TINY, "--out", out, *how]
    with DirLock(out):  # another hardctl process writing it
        before = snapshot(out)
        line = error_line(cli(*args), 2)
        assert snapshot(out) == before
    assert f"--out {out} is in use by another hardctl process (pid {os.getpid()})" in line
    result = cli(*args)  # once released: what the folder allows (a new run without --force: not an empty one)
    assert result.code == then, result.err
    if then == 2:
        assert "already exists and is not empty" in result.err


def test_a_second_process_is_refused_and_a_dead_ones_lock_is_not_in_the_way(cli, tmp_path, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from hardctl.dirlock import DirLock; "
                               "DirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        line = error_line(train(cli, out, "--force"), 2)
        assert f"is in use by another hardctl process (pid {holder.pid})" in line
        assert snapshot(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".hardctl-lock").read_text().strip() == str(holder.pid)  # what a killed run leaves
    result = train(cli, out, "--force")
    assert result.code == 0, result.err


def test_a_run_that_never_started_leaves_no_folder_behind(tmp_path, monkeypatch):
    import hardctl.distill.run as run_module

    def build(cfg):
        raise UsageError("no such teacher")

    monkeypatch.setattr(run_module, "build", build)
    out = tmp_path / "new" / "run"
    with pytest.raises(UsageError, match="no such teacher"):
        run(RunConfig(command="train", data="digits", model="mlp", epochs=1), out)
    assert (tmp_path / "new").is_dir() and not out.exists()


def test_recipes_run_locks_its_out(cli, tmp_path):
    out = tmp_path / "recipe"
    out.mkdir()
    with DirLock(out):
        line = error_line(cli("recipes", "run", "transfer-digits", "--out", out, "--seeds", "0"), 2)
    assert f"--out {out} is in use by another hardctl process (pid {os.getpid()})" in line
    assert sorted(p.name for p in out.iterdir()) == [".hardctl-lock"]


def test_without_flock_the_pid_decides_and_a_dead_pid_is_stale(tmp_path, monkeypatch):
    """The fallback (no fcntl, or a file system that refuses flock): the lock file's pid, if alive, holds it."""
    monkeypatch.setattr(dirlock, "fcntl", None)
    monkeypatch.setattr(dirlock, "msvcrt", None)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".hardctl-lock").write_text(f"{child.pid}\n")
        with pytest.raises(UsageError, match=f"in use by another hardctl process \\(pid {child.pid}\\)"):
            DirLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    lock = DirLock(tmp_path).acquire()  # the holder died: its lock is stale
    assert (tmp_path / ".hardctl-lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(UsageError, match="in use"):
        DirLock(tmp_path).acquire()  # this process holds it
    lock.release()
    assert (tmp_path / ".hardctl-lock").read_text() == ""
    DirLock(tmp_path).acquire().release()


# ------------------------------------------------------------------------------------------------ resume
def test_resume_removes_what_killed_writes_left(tmp_path, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    (out / "summary.json").unlink()  # killed after its last checkpoint
    stale = [out / "checkpoints" / ".last.pt.31337.tmp", out / ".last.safetensors.31337.tmp",
             out / ".steps.jsonl.31337.tmp", out / ".hardctl-write-test-31337"]
    for path in stale:
        path.write_bytes(b"half a file")
    (out / "augmentors").mkdir()
    (out / "augmentors" / ".pool-001.safetensors.31337.tmp").write_bytes(b"half")
    summary = run(RunConfig.load(out), out, resume=True)
    assert summary["epochs"] == 1 and (out / "summary.json").is_file()
    assert not any(p.exists() for p in stale) and list((out / "augmentors").iterdir()) == []


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_full_disk_keeps_the_previous_checkpoint_whole(cli, tmp_path, monkeypatch):
    """Epoch 2's last.pt cannot be written: the error says why, and every file of epoch 1's checkpoint stays."""
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(Path(f.name).name)
        if saves.count(".last.pt.%d.tmp" % os.getpid()) == 2:
            f.write(b"PK\x03\x04 the first bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    result = cli("train", *TINY[:4], "--epochs", "2", "--batch-size", "256", "--lr", "3e-3", "--out", out)
    assert result.code == 1, result.err
    line = result.err.splitlines()[-1]  # after epoch 1's progress lines: the one error line, no traceback
    assert line.startswith("hardctl: error: ") and "Traceback" not in result.err
    assert f"cannot write checkpoint {out / 'checkpoints' / 'last.pt'}: no space left on device" in line
    assert "the previous checkpoint is intact" in line
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(out / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1
    assert epoch_of(out / "last.safetensors") == epoch_of(out / "model.safetensors") == "1"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".hardctl-commit.json"]
    monkeypatch.setattr(torch, "save", real_save)
    resumed = cli("train", "--resume", out)  # the disk has room again
    assert resumed.code == 0, resumed.err
    assert epoch_of(out / "last.safetensors") == "2"
    assert [r["epoch"] for r in rundir.read_jsonl(out / "epochs.jsonl")] == [1, 2]


@pytest.mark.slow
def test_file_too_large_under_ulimit_moves_no_file_of_the_checkpoint(tmp_path):
    """With a file-size limit between the weights file (~0.8 MB) and the checkpoint (~2.4 MB) of the MLP, the
    epoch's weights used to be replaced while last.pt was not; now neither is, and the error says why."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", "from hardctl.cli import main; main()", "train", *TINY,
                           "--out", str(out)], capture_output=True, text=True, preexec_fn=limit_file_size,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot write checkpoint {out / 'checkpoints' / 'best.pt'}: file too large" in proc.stderr
    assert "start it again with --force" in proc.stderr  # there is no earlier checkpoint to continue from
    assert "internal error" not in proc.stderr
    assert not (out / "last.safetensors").exists() and not (out / "model.safetensors").exists()
    assert not (out / "checkpoints").exists() or list((out / "checkpoints").iterdir()) == []
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_files_replaced_together_are_all_replaced_or_none(tmp_path):
    a, b, journal = tmp_path / "a", tmp_path / "b", tmp_path / ".journal.json"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(OSError):
        with atomic.replace_together(journal, [a, b]):
            atomic.atomic_write_bytes(a, b"new a")
            assert a.read_text() == "old a"  # staged, not yet visible
            with atomic.atomic_path(b) as tmp:
                tmp.write_text("half of new b")
                raise OSError(errno.ENOSPC, "No space left on device")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    with atomic.replace_together(journal, [a, b]):
        atomic.atomic_write_bytes(a, b"new a")
        atomic.atomic_write_bytes(tmp_path / "c", b"not staged: written at once")
        assert (tmp_path / "c").is_file() and a.read_text() == "old a"
        atomic.atomic_write_bytes(b, b"new b")  # the last of the set: all of it is replaced now
        assert (a.read_text(), b.read_text()) == ("new a", "new b") and not journal.exists()
        with pytest.raises(KeyboardInterrupt):  # what happens after the set is complete cannot undo it
            with atomic.replace_together(journal, [a, b]):
                atomic.atomic_write_bytes(a, b"newer a")
                raise KeyboardInterrupt
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    with atomic.replace_together(journal, [a, b]):
        atomic.atomic_write_bytes(a, b"newest a")  # without the last file: replaced when the block ends
        assert a.read_text() == "new a"
    assert a.read_text() == "newest a" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_a_journal_left_by_a_kill_finishes_the_renames(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("old b")
    (tmp_path / "sub" / ".b.1.tmp").write_text("new b")
    journal = tmp_path / ".journal.json"
    journal.write_text(json.dumps({"replace": [["gone.tmp", "a"], ["sub/.b.1.tmp", "sub/b"]]}))
    assert atomic.finish_replacing(journal) == [tmp_path / "sub" / "b"]
    assert (tmp_path / "sub" / "b").read_text() == "new b" and not journal.exists()
    assert atomic.finish_replacing(journal) == []  # nothing to do
    journal.write_text('{"replace": [["sub/.b')  # never complete (it is written atomically): ignored
    assert atomic.finish_replacing(journal) == [] and not journal.exists()


class Killed(BaseException):
    """What a SIGKILL between two renames looks like to the test."""


def test_a_kill_between_the_renames_of_a_checkpoint_is_completed_by_resume(tmp_path, monkeypatch):
    """Killed after last.safetensors was renamed but before last.pt: the journal finishes the commit on resume,
    so the epoch is not trained again and last.pt, last.safetensors and model.safetensors agree."""
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("last.pt"):
            raise Killed()
        real_replace(src, dst)

    out = tmp_path / "run"
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(Killed):
        run(RunConfig(command="train", data="digits", model="mlp", epochs=1, batch_size=256), out)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert (out / "last.safetensors").is_file() and not (out / "checkpoints" / "last.pt").exists()
    assert (out / ".hardctl-commit.json").is_file()
    steps = (out / "steps.jsonl").read_text()
    summary = run(RunConfig.load(out), out, resume=True)
    assert summary["steps"] == len(steps.splitlines()) and (out / "steps.jsonl").read_text() == steps
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (out / ".hardctl-commit.json").exists() and not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------------ plugins
@pytest.fixture
def exiting_plugin(tmp_path, monkeypatch):
    """An installed plugin (entry point ``exiting``) whose module calls sys.exit(3) when imported."""
    (tmp_path / "hardctl_exiting.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = md.entry_points

    def entry_points(**selection):
        found = list(real(**selection))
        if selection.get("group") == plugins.ENTRY_POINT_GROUP:
            found.append(md.EntryPoint(name="exiting", value="hardctl_exiting", group=plugins.ENTRY_POINT_GROUP))
        return found

    monkeypatch.setattr(plugins.md, "entry_points", entry_points)
    plugins.reload()
    yield
    monkeypatch.undo()
    plugins.reload()


def test_a_plugin_calling_sys_exit_at_import_is_a_broken_plugin(cli, exiting_plugin, monkeypatch):
    result = cli("plugins", "--json")
    assert result.code == 0
    assert result.err.splitlines() == ["hardctl: warning: plugin 'exiting' failed to load: it called sys.exit(3)"]
    listed = {p["name"]: p for p in json.loads(result.out)}
    assert listed["exiting"]["status"] == "failed" and "digits" in listed["builtin_datasets"]["registered"]["datasets"]
    plugins.reload()
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    result = cli("plugins")
    assert result.code == 1
    assert "plugin 'exiting' failed to load: it called sys.exit(3)" in result.err


def test_a_hook_calling_sys_exit_costs_one_warning():
    class Quitter:
        __name__ = "quitter"

        @staticmethod
        @hookimpl
        def register_datasets(register):
            sys.exit()

    plugins.reload()
    plugins.manager.register(Quitter, name="quitter")
    try:
        with pytest.warns(plugins.PluginWarning, match=r"plugin 'quitter' failed in register_datasets: "
                                                       r"it called sys.exit\(\)"):
            names = plugins.datasets.names()
        assert "digits" in names
    finally:
        plugins.reload()
