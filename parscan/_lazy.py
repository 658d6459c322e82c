"""Lazy package exports (PEP 562): a public name, or a submodule, is imported on first use."""

import importlib
import importlib.util
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """Return ``(__getattr__, __dir__)`` for a package whose public names live in submodules.

    Parameters
    ----------
    package : str
        The package's name, for error messages.
    exports : dict of str to str
        Public name -> module path that defines it.
    """

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        if _is_submodule(f"{package}.{name}"):  # e.g. models.data after import models
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():  # what dir() lists for a module (its attributes), plus the lazy names
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


def _is_submodule(name: str) -> bool:
    """Whether ``name`` (``package.attribute``) is a module file of the package: not a
    dotted or dunder attribute (``getattr(models, "a.b", None)`` stays None), nor a folder
    without one (``__pycache__``)."""
    attribute = name.rpartition(".")[2]
    if not attribute.isidentifier() or attribute.startswith("__"):
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None
