"""The optional compiled hot path: the per-message modules, compiled by Cython in pure-Python mode.

Each module listed in COMPILED is plain Python (the twin that runs when nothing is
compiled) plus a .pxd beside it that types its hot functions and classes. When
Cython and a C compiler are at hand, `pip install .` builds them; when either is
missing, or a build fails, the package installs as pure Python and says so in one
line. BUSD_NO_EXTENSIONS=1 skips the build (and, at run time, the compiled modules:
see busd/_extensions.py). Everything else about the package is in pyproject.toml.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The per-message path (issue 14): framing, header parse and cache, sender stamping, the stream's read
# and write loops, a server connection's hand-over to the bus, the router's unicast path and reply tracking:
# the modules with .pxd types. (Compiled
# without types, as the router was at first, Cython's generic attribute lookups ran slower than CPython
# 3.11's specialising interpreter: Peer, Bus and ReplyTracker are extension types so they need none.)
# The list is busd._extensions.COMPILED's; keep them equal (a test does).
# Not the body checker (busd.wire.checker): a large body is checked in a thread, and compiled code never
# offers the GIL back, so the loop would wait seconds for a 30 MiB body (issue 13, attack 7). Nor message
# building (busd.wire.build): untyped, it ran slower compiled than under CPython.
COMPILED = [
    "busd.wire.message",
    "busd.transport.stream",
    "busd.transport.served",
    "busd.bus.ledger",
    "busd.bus.peer",
    "busd.bus.replies",
    "busd.bus.router",
]


class OptionalBuildExt(build_ext):
    """build_ext that installs the pure-Python package when an extension cannot be built."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1  # the modules build side by side

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler, no headers: the pure twin serves
            self._pure(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._pure(exc, ext.name)

    @staticmethod
    def _pure(exc: BaseException, name: str = "the compiled hot path") -> None:
        print(f"busd: not compiling {name} ({type(exc).__name__}: {exc}); the pure-Python twin will run",
              file=sys.stderr)


def extensions() -> list:
    if os.environ.get("BUSD_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("busd: Cython is not installed; installing the pure-Python package", file=sys.stderr)
        return []
    modules = [module.replace(".", "/") + ".py" for module in COMPILED]
    try:
        # Types come from the .pxd files only: the .py's annotations are documentation, and as C types they
        # would make the compiled twin refuse arguments the pure one takes (a memoryview for `bytes`).
        # nonecheck: a typed object that is None (a peer without a ledger line, by some bug) raises as in
        # Python, so one peer is dropped, instead of crashing the bus.
        extensions = cythonize(modules, language_level=3, quiet=True,
                               compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                                                    "embedsignature": True, "annotation_typing": False,
                                                    "nonecheck": True})
    except Exception as exc:  # noqa: BLE001 - Cython refused a module: install the pure twin
        OptionalBuildExt._pure(exc)
        return []
    for extension in extensions:
        # Python's own flags say -O3 -g: no debug info and -O2 build in half the time (CI builds twice),
        # and Cython's code, calls into the C API, runs as fast.
        extension.extra_compile_args = ["-O2", "-g0"]
    return extensions


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
