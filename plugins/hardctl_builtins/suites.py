"""Built-in evaluation suites, registered through the public hook like any plugin's."""

from __future__ import annotations

from hardctl import hookimpl
from hardctl.data import load_data
from hardctl.eval import EvalSet


def standard_suite(data_spec: str, *, shift_px: int | None = None, shift_seed: int = 0) -> list[EvalSet]:
    """The test split of ``data_spec`` and its reproducibly shifted copy (MNIST-C ``translate`` style)."""
    bundle = load_data(data_spec, shift_px=shift_px, shift_seed=shift_seed)
    shift_px = bundle.info["shift_px"]  # the data set's default when None was asked for
    shape = dict(num_classes=bundle.num_classes, in_chans=bundle.in_chans, img_size=bundle.img_size)
    return [
        EvalSet("centered", bundle.test, f"{bundle.info['name']} test split", **shape),
        EvalSet(
            "shifted",
            bundle.shifted_test,
            f"{bundle.info['name']} test split shifted by ±{shift_px} px in x and y (seed {shift_seed})",
            **shape,
            meta={"shift_px": shift_px, "shift_seed": shift_seed},
        ),
    ]


@hookimpl
def register_eval_suites(register):
    register("standard", standard_suite, help="the data set's test split, centered and shifted")
