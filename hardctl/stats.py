"""Summaries over seeds: the mean ± standard error of the mean that every results table reports."""

from __future__ import annotations

import math
import statistics
from typing import Any

__all__ = ["mean_sem"]


def mean_sem(values: list[float]) -> dict[str, Any]:
    """``{"mean", "sem", "n", "values"}``: the mean and the standard error of the mean (sample standard
    deviation / √n); ``mean`` is None without values and ``sem`` None with fewer than two."""
    n = len(values)
    mean = statistics.fmean(values) if values else None
    sem = statistics.stdev(values) / math.sqrt(n) if n >= 2 else None
    return {"mean": mean, "sem": sem, "n": n, "values": values}
