"""Start-up time of the ``hardctl`` commands people run most, against ``import torch`` measured beside them.

Every round starts each command once as a fresh interpreter, in an interleaved order, so that a busy
machine slows all of them alike; the report is the median of each over the rounds and its ratio to
``python -c "import torch"`` from the same rounds. Absolute seconds depend on the machine and its load,
the ratio much less: help that imports no torch stays a small fraction of it.

    python benchmarks/cli_startup.py              # 5 rounds, a table
    python benchmarks/cli_startup.py --rounds 9 --json

The target (issue 10): ``hardctl --help`` and ``hardctl COMMAND --help`` under 25 % of ``import torch``.
``--version`` reports the torch and CUDA versions, so it imports torch and is expected near 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

# The same entry point as the console script, without depending on where the script was installed.
HARDCTL = [sys.executable, "-c", "from hardctl.cli import main; main()"]

COMMANDS: dict[str, list[str]] = {
    "import torch": [sys.executable, "-c", "import torch"],
    "hardctl --help": [*HARDCTL, "--help"],
    "hardctl distill --help": [*HARDCTL, "distill", "--help"],
    "hardctl eval --help": [*HARDCTL, "eval", "--help"],
    "hardctl --version": [*HARDCTL, "--version"],
}
REFERENCE = "import torch"
TARGET = 0.25  # help / import torch


def time_once(argv: list[str]) -> float:
    """Wall-clock seconds of one run of ``argv`` to its exit; a failing command is an error, not a time."""
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[3:]) or argv[-1]!r} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def measure(rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """``rounds`` timings of every command, interleaved; the order rotates each round."""
    names = list(COMMANDS)
    if warmup:  # fill the page cache so that round 1 does not pay for the first read of torch's files
        for name in names:
            time_once(COMMANDS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(COMMANDS[name]))
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    """Median seconds of each command and its ratio to the reference, from the same rounds."""
    reference = statistics.median(times[REFERENCE])
    rows = {name: {"median_s": round(statistics.median(values), 4), "ratio": round(statistics.median(values) / reference, 3),
                   "runs_s": [round(v, 4) for v in values]}
            for name, values in times.items()}
    helps = [name for name in rows if name.endswith("--help")]
    worst = max(rows[name]["ratio"] for name in helps)
    return {"reference": REFERENCE, "rounds": len(times[REFERENCE]), "python": sys.version.split()[0],
            "commands": rows, "worst_help_ratio": worst, "target_ratio": TARGET, "meets_target": worst < TARGET}


def print_table(summary: dict) -> None:
    print(f"{summary['rounds']} interleaved rounds, medians; ratio = median / median of {summary['reference']!r}")
    width = max(map(len, summary["commands"]))
    print(f"{'command':<{width}}  {'median s':>9}  {'ratio':>6}")
    for name, row in summary["commands"].items():
        print(f"{name:<{width}}  {row['median_s']:>9.3f}  {row['ratio']:>6.3f}")
    verdict = "meets" if summary["meets_target"] else "MISSES"
    print(f"slowest help / import torch = {summary['worst_help_ratio']:.3f} ({verdict} the target < {TARGET})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds (default 5).")
    parser.add_argument("--no-warmup", action="store_true", help="Skip the untimed first run of each command.")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    summary = summarise(measure(args.rounds, warmup=not args.no_warmup))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
