"""A complete hardctl plugin: one data set (``--data squares[:N]``) and one evaluation suite.

Class k of the data set is a bright 4×4 square whose top-left corner sits in quadrant k of a 12×12
image, so any classifier can learn it in a few steps.
"""

import torch

from hardctl import hookimpl
from hardctl.data import ImageDatasets, TensorImages, load_data
from hardctl.eval import EvalSet


def make_squares(n: int, seed: int) -> TensorImages:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.zeros(n, 1, 12, 12, dtype=torch.uint8)
    offsets = torch.randint(0, 3, (n, 2), generator=generator)
    for i, (label, (dy, dx)) in enumerate(zip(labels.tolist(), offsets.tolist(), strict=True)):
        y, x = 6 * (label // 2) + dy, 6 * (label % 2) + dx
        images[i, 0, y : y + 4, x : x + 4] = 255
    return TensorImages(images, labels)


def build_squares(arg):
    n = int(arg) if arg else 200
    return ImageDatasets(name="squares", train=make_squares(n, seed=0), test=make_squares(n // 4, seed=1),
                         classes=["top-left", "top-right", "bottom-left", "bottom-right"], in_chans=1,
                         img_size=(12, 12), source="hardctl-squares (synthetic)")


def corner_suite(data_spec, **options):
    bundle = load_data(data_spec)
    return [EvalSet("centered", bundle.test, "the unshifted test split", num_classes=4, in_chans=1, img_size=(12, 12))]


@hookimpl
def register_datasets(register):
    register("squares", build_squares, help="synthetic squares, one per quadrant (N images: squares:N)")


@hookimpl
def register_eval_suites(register):
    register("corners", corner_suite, help="the squares test split, unshifted")
