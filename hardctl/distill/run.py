"""The library's entry point for one training run: ``run(cfg, out)`` behind ``hardctl train``/``distill``.

It owns the order of a run's side effects: the run directory is checked (or made) and locked first, then
everything that can fail on bad input is built, then the config is written and the trainer runs; at the
end the figures are drawn and ``summary.json`` is written last, so a summary on disk means a finished run.

Under ``torchrun`` every rank calls :func:`run`. Rank 0 alone prepares and locks the run directory and
writes its files; the other ranks wait for it and fail with rank 0's one-line error when it refuses the
directory. ``--batch-size`` and ``--aug-batch-size`` are global and must split evenly over the ranks. The
world size (and ``--sync-bn``) is recorded in ``config.toml``'s ``[distributed]`` table and in
``summary.json``; ``--resume`` refuses another world size (the data shards and random streams depend on it).
The directory must be on a file system all ranks share (the ranks read back checkpoints and pool files).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from hardctl import distributed
from hardctl.atomic import atomic_write_bytes, atomic_write_json
from hardctl.codeversion import code_version
from hardctl.config import RunConfig
from hardctl.distill import rundir
from hardctl.distill.build import build, resolve_config
from hardctl.distill.progress import Reporter
from hardctl.distill.sampling import DistInfo
from hardctl.distill.trainer import Trainer
from hardctl.errors import HardctlError, UsageError
from hardctl.tomlio import read_toml

__all__ = ["run", "saved_launch"]

LAUNCH_TABLE = "distributed"  # config.toml's table of how the run was launched


def run(cfg: RunConfig, out: Path, *, resume: bool = False, force: bool = False,
        reporter: Reporter | None = None, sync_bn: bool = False, dist_timeout: float | None = None) -> dict[str, Any]:
    """Build, train and summarise one run in ``out``; returns the summary."""
    cfg = resolve_config(cfg)  # bad input (a device this machine lacks too) is refused before --out is touched
    check_split(cfg, DistInfo.from_env())
    info = distributed.setup(cfg.device, dist_timeout)  # joins the torchrun job (a no-op in one process)
    if resume:
        sync_bn = check_world(Path(out).expanduser(), info)
    # the directory is this job's until the run ends: a second run on it is refused (exit 2)
    with distributed.translate_errors(), shared_run_dir(out, info, resume=resume, force=force) as run_dir:
        trainer = Trainer(build(cfg), run_dir, reporter=reporter, dist=info, sync_bn=sync_bn)
        if resume:
            trainer.resume()
        elif info.is_main:
            cfg.save(run_dir)
            record_launch(run_dir, info.world_size, sync_bn)
        summary = trainer.fit()
        summary["world_size"] = info.world_size
        if info.is_main:
            if "hard" in summary:
                summary["hard"]["figures"] = draw_figures(trainer)
            summary["code"] = code_version()  # which hardctl made it (recipes do not reuse another version's runs)
            atomic_write_json(run_dir / rundir.SUMMARY_FILE, summary)
        distributed.barrier()  # the ranks leave together: none tears the group down while rank 0 still writes
    return summary


def check_split(cfg: RunConfig, info: DistInfo) -> None:
    """The global batch sizes must split evenly over the ranks (refused before ``--out`` is touched)."""
    world = info.world_size
    sizes = [("--batch-size", cfg.batch_size)] + ([("--aug-batch-size", cfg.aug_batch_size)] if cfg.uses_hard else [])
    for flag, size in sizes:
        if size is not None and size % world:
            raise UsageError(f"{flag} {size} is global and does not split over {world} processes",
                             hint=f"use a multiple of {world}")


def saved_launch(run_dir: Path) -> dict[str, Any]:
    """``config.toml``'s ``[distributed]`` table (``world_size``, ``sync_bn``); runs before it had one process."""
    return {"world_size": 1, "sync_bn": False,
            **read_toml(Path(run_dir) / rundir.CONFIG_FILE).get(LAUNCH_TABLE, {})}


def check_world(run_dir: Path, info: DistInfo) -> bool:
    """Refuse to resume a run with another world size; returns the run's ``--sync-bn``."""
    launch = saved_launch(run_dir) if (run_dir / rundir.CONFIG_FILE).is_file() else {"world_size": 1, "sync_bn": False}
    saved = int(launch["world_size"])
    if saved != info.world_size:
        raise UsageError(f"{run_dir} was trained by {saved} process{'es' * (saved != 1)}, this resume has "
                         f"{info.world_size}", hint=f"resume it with torchrun --nproc-per-node {saved}" if saved > 1
                         else "resume it without torchrun (one process)")
    return bool(launch["sync_bn"])


def record_launch(run_dir: Path, world_size: int, sync_bn: bool) -> None:
    """Append the ``[distributed]`` table to ``config.toml`` (RunConfig reads only its ``[run]`` table)."""
    path = Path(run_dir) / rundir.CONFIG_FILE
    table = f"\n[{LAUNCH_TABLE}]\nworld_size = {world_size}\nsync_bn = {'true' if sync_bn else 'false'}\n"
    atomic_write_bytes(path, path.read_bytes() + table.encode())


@contextmanager
def shared_run_dir(out: Path, info: DistInfo, *, resume: bool, force: bool) -> Iterator[Path]:
    """:func:`hardctl.distill.rundir.open_run_dir` on rank 0; the other ranks wait until it is ready and raise
    rank 0's error when it is refused, instead of waiting for a rank that has given up."""
    if info.world_size == 1:
        with rundir.open_run_dir(out, resume=resume, force=force) as run_dir:
            yield run_dir
        return
    with ExitStack() as stack:
        failure = None
        if info.is_main:
            try:
                stack.enter_context(rundir.open_run_dir(out, resume=resume, force=force))
            except HardctlError as exc:
                failure = (type(exc), exc.message, exc.hint)
                distributed.broadcast_object(failure)
                raise
            except BaseException:
                distributed.broadcast_object((HardctlError, "rank 0 could not open the run directory", None))
                raise
        failure = distributed.broadcast_object(failure)
        if failure is not None:
            kind, message, hint = failure
            raise kind(message, hint=hint)
        yield Path(out).expanduser()


def draw_figures(trainer: Trainer) -> dict[str, str]:
    """The augmentation grid, phase plot and learning curves of a HARD run; a figure never costs the user a
    finished run."""
    from hardctl.visualize import render  # matplotlib and PIL only when there is something to draw

    try:
        return {k: str(v) for k, v in render(trainer.run_dir, data=trainer.components.data).items()}
    except Exception as exc:
        trainer.log(f"could not draw the augmentation grid: {type(exc).__name__}: {exc}")
        return {}
