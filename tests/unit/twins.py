"""The pure-Python twin of busd's compiled modules, loaded beside them in the same process.

Importing `busd_twin.X`, for a module X in busd._extensions.COMPILED, loads busd/X.py
from its source whatever is compiled; relative imports resolve inside the twin
package, so busd_twin.transport.stream frames with busd_twin.wire.message, not with
the compiled busd.wire.message. Every other module of the twin package is the real
one (busd_twin.wire.marshal is busd.wire.marshal): the twins differ only in what is
compiled, and share classes such as Variant. Module-level caches of the compiled
modules are the twin's own.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

import busd
from busd._extensions import COMPILED, is_compiled

PREFIX = "busd_twin"
_ROOT = os.path.dirname(os.path.abspath(busd.__file__))


class _Alias(importlib.abc.Loader):
    """Loads busd_twin.X as the real busd.X module itself."""

    def __init__(self, real_name: str):
        self.real_name = real_name

    def create_module(self, spec):  # noqa: ANN001, ANN201 - importlib's protocol
        return importlib.import_module(self.real_name)

    def exec_module(self, module) -> None:  # noqa: ANN001 - already executed as the real module
        pass


class _TwinFinder:
    @staticmethod
    def find_spec(name: str, path=None, target=None):  # noqa: ANN001 - importlib's protocol
        if name != PREFIX and not name.startswith(PREFIX + "."):
            return None
        parts = name.split(".")[1:]
        real_name = ".".join(["busd", *parts])
        base = os.path.join(_ROOT, *parts)
        if parts and not os.path.isdir(base) and real_name not in COMPILED:
            return importlib.util.spec_from_loader(name, _Alias(real_name))
        if os.path.isdir(base):
            source = os.path.join(base, "__init__.py")
            return importlib.util.spec_from_file_location(
                name, source, loader=importlib.machinery.SourceFileLoader(name, source),
                submodule_search_locations=[base])
        source = base + ".py"
        if not os.path.exists(source):
            return None
        return importlib.util.spec_from_file_location(name, source,
                                                      loader=importlib.machinery.SourceFileLoader(name, source))


def twin(module_name: str) -> ModuleType:
    """The pure-Python twin of busd module `module_name` (e.g. "busd.wire.message")."""
    if _TwinFinder not in sys.meta_path:
        sys.meta_path.insert(0, _TwinFinder)  # type: ignore[arg-type]
    return importlib.import_module(PREFIX + module_name[len("busd"):])


def compiled_modules() -> list[str]:
    return [name for name in COMPILED if is_compiled(name)]
