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
        if importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule, e.g.
            return importlib.import_module(f"{package}.{name}")  # models.data after import models
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():  # what dir() lists for a module (its attributes), plus the lazy names
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
