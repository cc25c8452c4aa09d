"""Corruption benchmarks: their corruption lists, the AlexNet baseline, and the aggregate scores.

ImageNet-C (Hendrycks & Dietterich, ICLR 2019). With E(f, c, s) the top-1 error of model f on
corruption c at severity s:

* ``CE(c) = sum_s E(f, c, s) / sum_s E(AlexNet, c, s)`` and **mCE** = mean of CE over the 15
  benchmark corruptions, in %;
* **relative mCE** = mean over the 15 of
  ``sum_s (E(f, c, s) - E(f, clean)) / sum_s (E(AlexNet, c, s) - E(AlexNet, clean))``, which needs the
  model's clean ImageNet validation error;
* **mean accuracy** over the 75 (corruption, severity) cells (robustbench's "corruptions_acc");
* the four held-out *extra* corruptions are reported apart and never enter mCE.

The AlexNet per-severity errors are those of hendrycks/robustness issue #10 (also
facebookresearch/dinov3 ``imagenet_c.py``); their per-corruption means equal google-research/augmix's
``ALEXNET_ERR`` to 1e-6. The clean AlexNet error 0.4348 is google-research/robustness_metrics'
``ALEXNET_AVERAGE_ERR_CLEAN`` (1 - 0.56522, torchvision's AlexNet).

CIFAR-10-C has no AlexNet normalisation (hendrycks/robustness issue #28): the mean accuracy and mean
error over the 15 x 5 cells are reported. MNIST-C has one fixed severity per corruption: the mean error
over its 15 corruptions (``identity``, the clean copy, excluded).
"""

from __future__ import annotations

from statistics import fmean

__all__ = [
    "ALEXNET_CLEAN_ERR", "ALEXNET_ERR", "CATEGORIES", "CORRUPTIONS", "EXTRAS", "MNIST_C_CORRUPTIONS",
    "SEVERITIES", "alexnet_mean_err", "category_of", "imagenet_c_scores", "mean_cell_scores",
    "summarize",
]

SEVERITIES = (1, 2, 3, 4, 5)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
"""The ImageNet-C release tars (``noise.tar`` ...) and the corruptions each holds."""

CORRUPTIONS: tuple[str, ...] = tuple(c for cat in ("noise", "blur", "weather", "digital") for c in CATEGORIES[cat])
"""The 15 benchmark corruptions in canonical order (the order of the AlexNet table)."""

EXTRAS: tuple[str, ...] = CATEGORIES["extra"]
"""The 4 held-out corruptions: scored and reported, never part of mCE."""

MNIST_C_CORRUPTIONS: tuple[str, ...] = (
    "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
    "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges",
)  # fmt: skip
"""google-research/mnist-c ``corruptions.py::CORRUPTIONS``; ``identity`` is the clean copy."""

ALEXNET_ERR: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
    "speckle_noise": (0.66192, 0.74440, 0.90246, 0.94548, 0.97268),
    "gaussian_blur": (0.54732, 0.70444, 0.82574, 0.89864, 0.95940),
    "spatter": (0.47196, 0.62194, 0.75052, 0.84132, 0.90182),
    "saturate": (0.59342, 0.65514, 0.51174, 0.70834, 0.82260),
}
"""AlexNet top-1 error (fraction) per corruption and severity 1..5 on ImageNet-C."""

ALEXNET_CLEAN_ERR = 0.4348


def alexnet_mean_err(corruption: str) -> float:
    """AlexNet's error on ``corruption`` averaged over the 5 severities (augmix's ``ALEXNET_ERR``)."""
    return fmean(ALEXNET_ERR[corruption])


def category_of(corruption: str) -> str:
    return next(cat for cat, names in CATEGORIES.items() if corruption in names)


def imagenet_c_scores(errors: dict[tuple[str, int], float], clean_err: float | None = None) -> dict:
    """ImageNet-C aggregates from per-cell top-1 errors (fractions), keyed by (corruption, severity).

    Returns ``{"ce": {c: CE}, "mce": ..., "relative_mce": ..., "mean_acc": ..., "extras_mean_acc": ...,
    "extras_ce": {c: CE}}`` in %, each ``None`` when a cell it needs is missing (or, for relative mCE,
    when ``clean_err`` is).
    """

    def ce(corruption: str) -> float | None:
        cells = [errors.get((corruption, s)) for s in SEVERITIES]
        if any(e is None for e in cells):
            return None
        return 100.0 * sum(cells) / sum(ALEXNET_ERR[corruption])

    def relative_ce(corruption: str) -> float | None:
        cells = [errors.get((corruption, s)) for s in SEVERITIES]
        if clean_err is None or any(e is None for e in cells):
            return None
        num = sum(e - clean_err for e in cells)
        return 100.0 * num / sum(e - ALEXNET_CLEAN_ERR for e in ALEXNET_ERR[corruption])

    def mean_acc(corruptions: tuple[str, ...]) -> float | None:
        cells = [errors.get((c, s)) for c in corruptions for s in SEVERITIES]
        return None if any(e is None for e in cells) else 100.0 * (1.0 - fmean(cells))

    ces = {c: ce(c) for c in CORRUPTIONS}
    rel = [relative_ce(c) for c in CORRUPTIONS]
    return {
        "ce": ces,
        "mce": None if None in ces.values() else fmean(ces.values()),
        "relative_mce": None if None in rel else fmean(rel),
        "mean_acc": mean_acc(CORRUPTIONS),
        "extras_ce": {c: ce(c) for c in EXTRAS},
        "extras_mean_acc": mean_acc(EXTRAS),
    }


def mean_cell_scores(accs: dict[str, float | None], names: tuple[str, ...]) -> tuple[float | None, int]:
    """Mean accuracy (%) over the cells ``names`` and how many of them were scored."""
    found = [accs[n] for n in names if accs.get(n) is not None]
    return (fmean(found) if len(found) == len(names) else None), len(found)


# --- summary rows ------------------------------------------------------------------------------------------


def _row(benchmark: str, metric: str, value: float | None, *, needed: int, found: int, images: int,
         lower_is_better: bool, note: str = "") -> dict:
    status = "ok" if value is not None else "incomplete"
    reason = "" if value is not None else note or f"{found} of {needed} cells scored"
    return {"kind": "summary", "set": benchmark, "metric": metric, "value": value, "status": status,
            "reason": reason, "images": images, "lower_is_better": lower_is_better}


def _imagenet_c(rows: list[dict]) -> list[dict]:
    cells = [r for r in rows if r["meta"].get("benchmark") == "imagenet-c" and "severity" in r["meta"]]
    ok = [r for r in cells if r["status"] == "ok" and r["acc"] is not None]
    if not ok:  # nothing scored: the skipped rows already say what was looked for
        return []
    errors = {(r["meta"]["corruption"], r["meta"]["severity"]): 1.0 - r["acc"] / 100.0 for r in ok}
    clean = next((r for r in rows if r["set"] == "imagenet-val" and r["status"] == "ok"), None)
    clean_err = 1.0 - clean["acc"] / 100.0 if clean is not None and clean["acc"] is not None else None
    scores = imagenet_c_scores(errors, clean_err)
    bench = [r for r in ok if r["meta"]["corruption"] in CORRUPTIONS]
    extra = [r for r in ok if r["meta"]["corruption"] in EXTRAS]
    n_bench, n_extra = sum(r["images"] for r in bench), sum(r["images"] for r in extra)
    out = []
    for c in CORRUPTIONS + EXTRAS:
        value = scores["ce"].get(c, scores["extras_ce"].get(c))
        got = sum(1 for r in ok if r["meta"]["corruption"] == c)
        if not got:
            continue
        out.append(_row(f"imagenet-c/{c}", "CE", value, needed=5, found=got, lower_is_better=True,
                        images=sum(r["images"] for r in ok if r["meta"]["corruption"] == c)))
    out.append(_row("imagenet-c", "mCE", scores["mce"], needed=75, found=len(bench), images=n_bench,
                    lower_is_better=True))
    rel_note = "" if clean_err is not None or scores["mce"] is None else "needs the clean imagenet-val error"
    out.append(_row("imagenet-c", "relative mCE", scores["relative_mce"], needed=75, found=len(bench),
                    images=n_bench, lower_is_better=True, note=rel_note))
    out.append(_row("imagenet-c", "mean acc (75 cells)", scores["mean_acc"], needed=75, found=len(bench),
                    images=n_bench, lower_is_better=False))
    out.append(_row("imagenet-c extras", "mean acc (20 cells)", scores["extras_mean_acc"], needed=20,
                    found=len(extra), images=n_extra, lower_is_better=False))
    return out


def _cells(rows: list[dict], benchmark: str) -> dict[str, dict]:
    return {r["set"]: r for r in rows if r["meta"].get("benchmark") == benchmark and r["status"] == "ok"}


def _cifar10_c(rows: list[dict]) -> list[dict]:
    ok = _cells(rows, "cifar10-c")
    if not ok:
        return []
    accs = {name: r["acc"] for name, r in ok.items()}
    names = tuple(f"cifar10-c/{c}/{s}" for c in CORRUPTIONS for s in SEVERITIES)
    extras = tuple(f"cifar10-c/{c}/{s}" for c in EXTRAS for s in SEVERITIES)
    mean, found = mean_cell_scores(accs, names)
    extras_mean, extras_found = mean_cell_scores(accs, extras)
    images = sum(ok[n]["images"] for n in names if n in ok)
    return [
        _row("cifar10-c", "mean acc (75 cells)", mean, needed=75, found=found, images=images, lower_is_better=False),
        _row("cifar10-c", "mean error (75 cells)", None if mean is None else 100.0 - mean, needed=75, found=found,
             images=images, lower_is_better=True),
        _row("cifar10-c extras", "mean acc (20 cells)", extras_mean, needed=20, found=extras_found,
             images=sum(ok[n]["images"] for n in extras if n in ok), lower_is_better=False),
    ]


def _mnist_c(rows: list[dict]) -> list[dict]:
    ok = _cells(rows, "mnist-c")
    if not ok:
        return []
    accs = {name: r["acc"] for name, r in ok.items()}
    names = tuple(f"mnist-c/{c}" for c in MNIST_C_CORRUPTIONS)
    mean, found = mean_cell_scores(accs, names)
    images = sum(ok[n]["images"] for n in names if n in ok)
    return [
        _row("mnist-c", "mean error (15 corruptions)", None if mean is None else 100.0 - mean, needed=15,
             found=found, images=images, lower_is_better=True),
        _row("mnist-c", "mean acc (15 corruptions)", mean, needed=15, found=found, images=images,
             lower_is_better=False),
    ]


def summarize(rows: list[dict]) -> list[dict]:
    """Summary rows (mCE, means over cells ...) for the set rows of *one* model.

    Set rows carry ``meta["benchmark"]`` (``imagenet-c``, ``cifar10-c`` or ``mnist-c``) and, for the
    ImageNet-C cells, ``meta["corruption"]`` and ``meta["severity"]``.
    """
    return _imagenet_c(rows) + _cifar10_c(rows) + _mnist_c(rows)
