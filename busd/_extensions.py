"""Which per-message modules run compiled, and the switch that runs their pure-Python twins instead.

setup.py compiles the modules in COMPILED with Cython (pure-Python mode: the .py
is the source, a .pxd beside it adds types). An extension module is found before
the .py of the same name, so a finder put in front (honour_switch(), called by
busd/__init__.py before anything else of busd is imported) loads a module from
its .py when BUSD_NO_EXTENSIONS=1 says so, and in a checkout (an editable
install, where Cython's .c lies beside the module) when any of them changed after
its build: an edit must never be silently shadowed by a stale build. It is all
of them or none, because the compiled modules call each other at C level (stream
cimports message's header parse).
"""

from __future__ import annotations

import os
import sys

COMPILED = (
    "busd.wire.message",
    "busd.transport.stream",
    "busd.transport.served",
    "busd.bus.ledger",
    "busd.bus.peer",
    "busd.bus.replies",
    "busd.bus.router",
)
SWITCH = "BUSD_NO_EXTENSIONS"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Why the modules in COMPILED run from their .py, when they do; worked out at the first import of one
_pure_because: list[str | None] = []


class _SourceFirst:
    """A meta path finder that loads a module in COMPILED from its .py when it must not run compiled."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):  # noqa: ANN001 - importlib's protocol
        if name not in COMPILED:
            return None
        if not _pure_because:
            _pure_because.append(_why_pure())
        if _pure_because[0] is None:
            return None  # the normal finders load the extension module
        source = os.path.join(_PACKAGE_ROOT, *name.split(".")) + ".py"
        import importlib.machinery
        import importlib.util
        return importlib.util.spec_from_file_location(
            name, source, loader=importlib.machinery.SourceFileLoader(name, source))


def _why_pure() -> str | None:
    if os.environ.get(SWITCH):
        return f"{SWITCH}=1"
    for name in COMPILED:
        source = os.path.join(_PACKAGE_ROOT, *name.split("."))
        generated = source + ".c"
        if not os.path.exists(generated):
            continue  # an installed package: its build and its source came together
        newest_source = max(_mtime(source + ".py"), _mtime(source + ".pxd"))
        if newest_source > _mtime(generated):
            return f"{name} changed after it was compiled (rebuild: pip install -e .)"
    return None


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def honour_switch() -> None:
    if _SourceFirst not in sys.meta_path:
        sys.meta_path.insert(0, _SourceFirst)  # type: ignore[arg-type]


def is_compiled(module_name: str) -> bool:
    """Is the module `module_name` (imported now if need be) an extension module, not its .py twin?"""
    module = sys.modules.get(module_name)
    if module is None:
        import importlib
        module = importlib.import_module(module_name)
    return not (module.__file__ or "").endswith(".py")


def mode() -> str:
    """How the per-message path runs, for `busd --version` and the startup log."""
    compiled = [name for name in COMPILED if is_compiled(name)]
    if len(compiled) == len(COMPILED):
        return "compiled"
    reason = (_pure_because[0] if _pure_because else None) or "no compiled modules installed"
    if not compiled:
        return f"pure Python ({reason})"
    return f"partly compiled ({', '.join(compiled)}; the others: {reason})"
