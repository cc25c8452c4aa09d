"""Built-in evaluation suites, registered through the public hook like any plugin's.

``standard`` reads the ``--data`` spec of the training commands. The others read the official
release layouts under ``--data-root DIR`` (or ``--set NAME=DIR``); they are registered with
``sources=``, the :class:`hardctl.eval.sources.Source` list that says which ``--set`` names they
take and where under the root each set is looked for. The sets themselves are built in
:mod:`hardctl.eval.imagenet` and :mod:`hardctl.eval.arrays`.
"""

from __future__ import annotations

from hardctl import hookimpl
from hardctl.data import load_data
from hardctl.eval import EvalSet


def standard_suite(data_spec: str, *, shift_px: int | None = None, shift_seed: int = 0, **_options) -> list[EvalSet]:
    """The test split of ``data_spec`` and its reproducibly shifted copy (MNIST-C ``translate`` style)."""
    bundle = load_data(data_spec, shift_px=shift_px, shift_seed=shift_seed)
    shift_px = bundle.info["shift_px"]  # the data set's default when None was asked for
    shape = dict(num_classes=bundle.num_classes, in_chans=bundle.in_chans, img_size=bundle.img_size)
    return [
        EvalSet("centered", bundle.test, f"{bundle.info['name']} test split", **shape, meta={"data": data_spec}),
        EvalSet(
            "shifted",
            bundle.shifted_test,
            f"{bundle.info['name']} test split shifted by ±{shift_px} px in x and y (seed {shift_seed})",
            **shape,
            meta={"shift_px": shift_px, "shift_seed": shift_seed, "data": data_spec},
        ),
    ]


@hookimpl
def register_eval_suites(register):
    from hardctl.eval import arrays, imagenet

    register("standard", standard_suite, help="the --data set's test split, centered and (--shifted) shifted")
    inet = imagenet.SOURCES
    register("imagenet-id", imagenet.imagenet_id_suite,
             help="ImageNet val, ReaL (images without a label excluded), ImageNet-V2 matched-frequency",
             sources=tuple(inet[k] for k in imagenet.IMAGENET_ID_SOURCES))
    register("imagenet-ood", imagenet.imagenet_ood_suite,
             help="ImageNet-A/R (200-class), Sketch, Stylized val, ImageNet-C (mCE, relative mCE); val as clean reference",
             sources=tuple(inet[k] for k in imagenet.IMAGENET_OOD_SOURCES))
    small = arrays.SOURCES
    register("cifar10", arrays.cifar10_suite, help="CIFAR-10 test batch and its shifted copy",
             sources=(small["cifar10"],))
    register("cifar10-c", arrays.cifar10_c_suite, help="CIFAR-10-C: 19 corruptions x 5 severities (mean over the 15)",
             sources=(small["cifar10-c"],))
    register("mnist", arrays.mnist_suite, help="MNIST test split and its shifted copy", sources=(small["mnist"],))
    register("mnist-c", arrays.mnist_c_suite, help="MNIST-C: identity + 15 corruptions, translate among them",
             sources=(small["mnist-c"],))
    register("fashion-mnist", arrays.fashion_mnist_suite,
             help="Fashion-MNIST test split and its shifted copy (default: Debian's dataset-fashion-mnist)",
             sources=(small["fashion-mnist"],))
