"""Scoring classifiers on labelled image sets.

:func:`accuracy` (a training run's validation) and ``hardctl eval`` share one streaming loop,
:mod:`hardctl.eval.engine`. Evaluation suites, registered by plugins through
:func:`hardctl.hookspecs.register_eval_suites`, turn a data spec (or, for suites registered with
``sources=``, a ``--data-root`` and ``--set`` folders) into a list of :class:`EvalSet`.

The modules of this package, one concept each: :mod:`~hardctl.eval.sources` (finding the sets),
:mod:`~hardctl.eval.preprocess` (per-model preprocessing, image files),
:mod:`~hardctl.eval.imagenet` and :mod:`~hardctl.eval.arrays` (the built-in sets),
:mod:`~hardctl.eval.metrics` (per-set scores), :mod:`~hardctl.eval.corruptions` (mCE and friends),
:mod:`~hardctl.eval.engine` (the streaming loop), :mod:`~hardctl.eval.runner` (models x sets -> result
rows) and :mod:`~hardctl.eval.report` (table, JSON, CSV, Markdown). None of them imports the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from hardctl import plugins
from hardctl.eval.engine import accuracy  # a training run's validation: one model through the one loop

__all__ = ["EvalSet", "accuracy", "run_suite"]


@dataclass
class EvalSet:
    """One labelled test set of a suite.

    ``dataset`` yields ``(image, target)`` with images as float ``[0, 1]`` or uint8 ``C×H×W``; a set
    too large to list up front gives ``open`` instead, called when the set is scored (ImageNet-C has
    3.75 M files). ``preprocess`` says how images reach a model: ``"tensor"`` (as stored, the model
    must take ``img_size``), or, for image files, ``"crop"`` / ``"resize"`` per model (see
    :mod:`hardctl.eval.preprocess`). ``logit_indices`` restricts scoring to those logit columns (the
    targets are then positions in that list), ``scorer`` replaces top-k scoring (ReaL), and a set that
    was not found has ``skipped`` set to the reason, naming the paths looked for.
    """

    name: str
    dataset: Dataset | None = None
    description: str = ""
    num_classes: int = 0  # what a model must predict and take to be scored on this set
    in_chans: int = 0
    img_size: tuple[int, int] = (0, 0)  # (0, 0): each model's own input size (image-file sets)
    meta: dict = field(default_factory=dict)
    open: Callable[[], Dataset] | None = None
    preprocess: str = "tensor"
    logit_indices: Sequence[int] | None = None
    scorer: Callable[[], object] | None = None
    path: str = ""
    skipped: str = ""

    def load(self) -> Dataset:
        """The data set (``open()`` is called each time, so a lazily listed set is not kept around)."""
        if self.dataset is not None:
            return self.dataset
        if self.open is None:
            raise ValueError(f"eval set {self.name!r} has neither a dataset nor an open()")
        return self.open()


def run_suite(name: str, data_spec: str, **options) -> list[EvalSet]:
    """The test sets of suite ``name`` for ``data_spec`` (suites come from plugins)."""
    return plugins.eval_suites.get(name).obj(data_spec, **options)
