"""Where busd spends its CPU during a benchmark workload: py-spy samples, summed by module.

bench_bus.py --profile DIR records each busd run with `py-spy record --format raw`
(collapsed stacks: one line per distinct stack, "frame;frame;...;frame count")
and prints, per workload, each module's share of the samples: self (the
sampled frame is in it) and inclusive (some frame of the stack is in it). The
inclusive share of busd/bus/ledger.py is what the per-user ledger costs.
Sampling perturbs the daemon a little: a profiled run's timings are not the
benchmark's figures.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field

# "function (path/to/module.py:123)"; py-spy writes idle threads' frames the same way.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None


class Recorder:
    """py-spy recording one process until stop()."""

    def __init__(self, pid: int, output: str, rate: int = 250):
        self.output = output
        self.process = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking",
             "--full-filenames",
             "--output", output], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self, timeout: float = 30) -> None:
        """Stop sampling and wait for the file (py-spy writes it on SIGINT)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def module_of(frame: str, root: str) -> str:
    """The module a frame is in: a path under `root` relative to it, else the file's name
    (py-spy runs with --full-filenames, so busd's own frames carry their absolute path)."""
    match = _FRAME.match(frame)
    path = match.group("path") if match else frame
    if path.startswith(root):
        return os.path.relpath(path, root)
    return os.path.basename(path) or path


@dataclass
class Profile:
    """Samples summed by module."""

    samples: int = 0
    self_samples: Counter = field(default_factory=Counter)
    inclusive: Counter = field(default_factory=Counter)

    def add_file(self, path: str, root: str) -> None:
        with open(path, errors="replace") as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                modules = [module_of(frame, root) for frame in stack.split(";")]
                self.samples += n
                self.self_samples[modules[-1]] += n
                for module in set(modules):
                    self.inclusive[module] += n

    def share(self, module: str, inclusive: bool = True) -> float:
        counts = self.inclusive if inclusive else self.self_samples
        return 100.0 * counts.get(module, 0) / self.samples if self.samples else 0.0

    def table(self, top: int = 12, watch: tuple[str, ...] = ("busd/bus/ledger.py",)) -> str:
        """The `top` modules by self samples, and the inclusive share of each module in `watch`."""
        lines = [f"  {self.samples} samples; self % by module (inclusive % beside it):"]
        for module, n in self.self_samples.most_common(top):
            lines.append(f"    {100.0 * n / self.samples:5.1f}  ({self.share(module):5.1f})  {module}")
        for module in watch:
            lines.append(f"  {module}: {self.share(module):.1f}% of samples have a frame in it "
                         f"({self.share(module, inclusive=False):.1f}% in it itself)")
        return "\n".join(lines)


__all__ = ["Profile", "Recorder", "available", "module_of"]
