"""hardctl: knowledge distillation with learned hard augmentations (HARD).

The library never imports the CLI. Plugin authors need only :data:`hookimpl`::

    from hardctl import hookimpl

    @hookimpl
    def register_datasets(register):
        register("my-data", build_my_data, help="...")
"""

__version__ = "0.1.0"

from hardctl.hookspecs import hookimpl  # noqa: E402  (re-exported for plugin authors)

__all__ = ["__version__", "hookimpl"]
