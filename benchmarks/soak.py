"""Soak run: minutes of mixed traffic on busd and dbus-daemon side by side; is the daemon's RSS flat?

    python3 benchmarks/soak.py                       # 10 minutes, busd and dbus-daemon
    python3 benchmarks/soak.py --minutes 3 --json    # the series as JSON on stdout
    python3 benchmarks/soak.py --diagnose --minutes 4  # busd under tracemalloc: what grows, by traceback

Each bus is a separate daemon with the same configuration and the same paced
load (soak_load.py: calls, signals with subscribers, connection churn, an
activatable service killed with SIGKILL and restarted, junk and never-reading
clients, a slow consumer), each bus's load in its own process. Every
--interval seconds the daemon's RSS and open fds are read from /proc. The
verdict: the high-water growth of RSS over minutes --warmup..N must be below
--bound MiB/minute for every daemon (exit status 1 otherwise): the highest RSS
of the last quarter of that window against the highest of its first quarter,
per minute between the two quarters. A leak raises every high-water mark; the
load's transients (a never-reader's queue filling to its cap, then dropped)
rise and fall within one quarter, which a least-squares slope over a short
window mistakes for growth (also printed, for reference).

--diagnose runs busd in a child process of this script that starts tracemalloc
before importing busd (no switch in busd itself): after the warm-up and at the
end it snapshots the Python heap, and prints what grew in between, by
traceback, and the object types whose count grew.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TESTS = os.path.join(REPO, "tests")
sys.path[:0] = [path for path in (HERE, TESTS) if path not in sys.path]

import soak_load  # noqa: E402
from buses import SESSION_CONFIG, START_TIMEOUT, RunningBus, start_bus  # noqa: E402

# The same for both daemons: dbus-daemon's built-in defaults would refuse the churn
# (256 connections per user) long before busd's would.
LIMITS = """
  <limit name="max_completed_connections">10000</limit>
  <limit name="max_incomplete_connections">1000</limit>
  <limit name="max_connections_per_user">10000</limit>
  <limit name="max_match_rules_per_connection">5000</limit>
  <limit name="max_replies_per_connection">5000</limit>
  <limit name="auth_timeout">5000</limit>
  <limit name="service_start_timeout">60000</limit>
"""
TRACE_FRAMES = 12
MIB = 1024 * 1024


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Sample:
    """One reading of a daemon from /proc: seconds since the load started, RSS (KiB), fds, zombie children."""

    t: float
    rss_kib: int
    fds: int
    zombies: int


def read_sample(pid: int, t: float) -> Sample:
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Sample(round(t, 1), rss, len(os.listdir(f"/proc/{pid}/fd")), zombie_children(pid))


def zombie_children(pid: int) -> int:
    """Children of `pid` that exited and were never reaped (a daemon that forgets its services)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                count += 1
    return count


def slope(samples: list[Sample], since: float) -> float | None:
    """Least-squares slope of RSS in MiB per minute over the samples taken at or after `since` seconds."""
    points = [(s.t / 60, s.rss_kib / 1024) for s in samples if s.t >= since]
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def high_water_growth(samples: list[Sample], since: float) -> float | None:
    """MiB per minute between the highest RSS of the first and of the last quarter of the window from `since`."""
    window = [s for s in samples if s.t >= since]
    if len(window) < 4:
        return None
    start, end = window[0].t, window[-1].t
    quarter = (end - start) / 4
    if quarter <= 0:
        return None
    first = [s.rss_kib for s in window if s.t <= start + quarter]
    last = [s.rss_kib for s in window if s.t >= end - quarter]
    minutes = (end - start - quarter) / 60  # between the quarters' midpoints
    return (max(last) - max(first)) / 1024 / minutes


@dataclass
class Series:
    """Everything the soak learned about one daemon."""

    kind: str
    pid: int
    samples: list[Sample] = field(default_factory=list)
    tally: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    log_lines: int = 0
    log_tail: list[str] = field(default_factory=list)

    def slope(self, since: float) -> float | None:
        return slope(self.samples, since)

    def growth(self, since: float) -> float | None:
        return high_water_growth(self.samples, since)

    def as_json(self, since: float) -> dict:
        return {"kind": self.kind, "pid": self.pid, "growth_mib_per_min": self.growth(since),
                "slope_mib_per_min": self.slope(since),
                "samples": [[s.t, s.rss_kib, s.fds, s.zombies] for s in self.samples],
                "sample_fields": ["seconds", "rss_kib", "fds", "zombie_children"],
                "load": self.tally, "load_errors": self.errors, "log_lines": self.log_lines,
                "log_tail": self.log_tail}


# ---------------------------------------------------------------- the load, in a process per bus


def _load_main(address: str, rate: float, seed: int, stop: multiprocessing.Event,
               started: multiprocessing.Event, results: multiprocessing.Queue) -> None:
    load = soak_load.Load(address, rate, seed)
    try:
        load.start()
        started.set()
        stop.wait()
    finally:
        tally = load.stop()
        results.put((dict(tally.counts), tally.errors))


class LoadProcess:
    """soak_load.Load on one bus, in a process of its own (its threads must not share a GIL with the sampler)."""

    def __init__(self, address: str, rate: float, seed: int):
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._started = context.Event()
        self._results = context.Queue()
        self.process = context.Process(target=_load_main, daemon=True,
                                       args=(address, rate, seed, self._stop, self._started, self._results))
        self.process.start()

    def wait_started(self, timeout: float = 60) -> None:
        if not self._started.wait(timeout):
            self.close()
            raise RuntimeError("the load did not start (is the bus answering?)")

    def finish(self, timeout: float = 60) -> tuple[dict, list[str]]:
        self._stop.set()
        try:
            return self._results.get(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# ---------------------------------------------------------------- the buses


def soak_config(servicedir: str) -> str:
    return f"<servicedir>{servicedir}</servicedir>{LIMITS}"


@contextmanager
def soak_bus(kind: str, log_path: str) -> Iterator[RunningBus]:
    """A bus of `kind` ('busd', 'dbus-daemon', or 'busd-traced' for --diagnose) with the soak's
    configuration and its activatable service; the daemon's stderr (its log) goes to `log_path`."""
    servicedir = tempfile.mkdtemp(prefix="soak-services-")
    try:
        soak_load.service_file(servicedir)
        # The daemon inherits our stderr: point fd 2 at its log file just while it is spawned.
        saved = os.dup(2)
        try:
            with open(log_path, "w") as daemon_log:
                os.dup2(daemon_log.fileno(), 2)
            if kind == "busd-traced":
                bus = TracedBusd(soak_config(servicedir))
            else:
                bus = start_bus(kind, soak_config(servicedir))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        try:
            yield bus
        finally:
            bus.stop()
    finally:
        shutil.rmtree(servicedir, ignore_errors=True)


class TracedBusd(RunningBus):
    """busd run by this script in a child process under tracemalloc; snapshot() asks it for its heap."""

    def __init__(self, extra_config: str):
        workdir = tempfile.mkdtemp(prefix="busd-traced-")
        config_path = os.path.join(workdir, "bus.conf")
        with open(config_path, "w") as f:
            f.write(SESSION_CONFIG.replace("{socket}", os.path.join(workdir, "bus")).replace("{extra}", extra_config))
        address_r, address_w = os.pipe()
        control_r, self._control = os.pipe()
        self._answers, answer_w = os.pipe()
        command = [sys.executable, os.path.abspath(__file__), "--traced-daemon", f"{control_r},{answer_w}",
                   "--", f"--config-file={config_path}", "--nofork", "--nopidfile", f"--print-address={address_w}"]
        process = subprocess.Popen(command, pass_fds=(address_w, control_r, answer_w), stdin=subprocess.DEVNULL)
        for fd in (address_w, control_r, answer_w):
            os.close(fd)
        with os.fdopen(address_r) as reader:
            ready = select.select([reader], [], [], START_TIMEOUT * 3)[0]
            address = reader.readline().strip() if ready else ""
        if not address:
            process.kill()
            process.wait()
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError("the traced busd printed no address")
        super().__init__(kind="busd-traced", address=address, process=process, workdir=workdir)

    def request(self, line: str) -> dict:
        """One request to the daemon's diagnosis thread (see traced_daemon) and its answer."""
        os.write(self._control, f"{line}\n".encode())
        answer = b""
        while not answer.endswith(b"\n"):
            if not select.select([self._answers], [], [], 300)[0]:
                raise RuntimeError(f"the traced busd did not answer {line!r}")
            chunk = os.read(self._answers, 4096)
            if not chunk:
                raise RuntimeError(f"the traced busd exited before answering {line!r}")
            answer += chunk
        return json.loads(answer)

    def snapshot(self, path: str) -> None:
        """Ask the daemon to write its tracemalloc snapshot to `path` (and its object counts to path.types)."""
        self.request(path)

    def stats(self) -> str:
        """The daemon's heaps now, as a short text: Python's traced bytes, glibc's in use, free and mmapped."""
        s = self.request("stats")
        return (f"traced {s['traced'] / MIB:6.1f}  malloc in use {s['in_use'] / MIB:6.1f} free {s['free'] / MIB:6.1f} "
                f"mmapped {s['mmapped'] / MIB:5.1f} MiB  {s['blocks']} blocks")

    def stop(self) -> None:
        for fd in (self._control, self._answers):
            if fd >= 0:
                os.close(fd)
        self._control = self._answers = -1
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def malloc_stats() -> dict[str, int]:
    """glibc's view of the C heap (every arena): bytes in use, free but kept, and mmapped (mallinfo2)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {"heap": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


def holders(type_name: str, limit: int = 3) -> dict:
    """How many objects of `type_name` are alive, and what refers to a few of them (two levels of types)."""
    gc.collect()
    objects = [o for o in gc.get_objects() if type(o).__qualname__ == type_name]
    chains = []
    for obj in objects[:limit]:
        first = [r for r in gc.get_referrers(obj) if r is not objects]
        chains.append([f"{type(r).__qualname__} <- " + ", ".join(
            sorted({type(rr).__qualname__ for rr in gc.get_referrers(r) if rr is not first})) for r in first])
    return {"count": len(objects), "held_by": chains}


def traced_daemon(fds: str, daemon_args: list[str]) -> int:
    """The child of --diagnose: tracemalloc first, then busd; a thread answers the script's requests:
    'stats' (traced bytes, glibc's heap, Python's allocated blocks) and a path (write a snapshot there)."""
    import tracemalloc
    tracemalloc.start(TRACE_FRAMES)
    control, answers = (int(fd) for fd in fds.split(","))

    def serve_requests() -> None:
        with os.fdopen(control) as requests:
            for line in requests:
                request = line.strip()
                if request == "stats":
                    answer = {"traced": tracemalloc.get_traced_memory()[0], "blocks": sys.getallocatedblocks(),
                              **malloc_stats()}
                elif request.startswith("holders "):
                    answer = holders(request.split()[1])
                else:
                    gc.collect()
                    tracemalloc.take_snapshot().dump(request)
                    with open(request + ".types", "w") as f:
                        json.dump(Counter(type(o).__qualname__ for o in gc.get_objects()), f)
                    answer = {"snapshot": request}
                os.write(answers, json.dumps(answer).encode() + b"\n")

    threading.Thread(target=serve_requests, daemon=True).start()
    from busd.daemon.cli import main
    return main(daemon_args)


def print_growth(before_path: str, after_path: str, top: int, out=sys.stdout) -> None:
    """What the traced daemon's heap gained between two snapshots, by traceback, and by object type."""
    import tracemalloc
    before = tracemalloc.Snapshot.load(before_path)
    after = tracemalloc.Snapshot.load(after_path)
    total = sum(s.size for s in after.statistics("filename")) - sum(s.size for s in before.statistics("filename"))
    print(f"traced heap: {total / MIB:+.2f} MiB between the snapshots", file=out)
    # compare_to() sorts by the size of the change either way: a queue that drained would hide what grew.
    grown = sorted((stat for stat in after.compare_to(before, "traceback") if stat.size_diff > 0),
                   key=lambda stat: -stat.size_diff)
    for stat in grown[:top]:
        print(f"\n{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks (now {stat.size / 1024:.1f} KiB)",
              file=out)
        for line in stat.traceback.format(limit=TRACE_FRAMES, most_recent_first=True):
            print("   " + line, file=out)
    with open(before_path + ".types") as f:
        types_before = Counter(json.load(f))
    with open(after_path + ".types") as f:
        types_after = Counter(json.load(f))
    grown = sorted(((types_after[t] - types_before[t], t) for t in types_after), reverse=True)
    print("\nobject types whose count grew:", file=out)
    for diff, name in grown[:top]:
        if diff <= 0:
            break
        print(f"  {diff:+8d}  {name} (now {types_after[name]})", file=out)


# ---------------------------------------------------------------- the run


def soak(kinds: list[str], minutes: float, interval: float, rate: float, log, diagnose_dir: str | None = None,
         warmup: float = 60.0, log_dir: str | None = None) -> list[Series]:
    """Run the load on every bus of `kinds` at once for `minutes`; sample each daemon every `interval` s.

    Each daemon's log goes to log_dir/KIND.log (a temporary directory when None).
    """
    with ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-logs-"))
        log_paths = [os.path.join(log_dir, f"{kind}.log") for kind in kinds]
        buses = [stack.enter_context(soak_bus(kind, path)) for kind, path in zip(kinds, log_paths)]
        loads = [LoadProcess(bus.address, rate, seed) for seed, bus in enumerate(buses)]
        for load in loads:
            stack.callback(load.close)
        for load in loads:
            load.wait_started()
        series = [Series(bus.kind, bus.process.pid) for bus in buses]
        start = time.monotonic()
        end = start + minutes * 60
        snapshots: list[str] = []
        next_sample = start
        log("   t(s)  " + "  ".join(f"{s.kind:>24}" for s in series))
        while True:
            now = time.monotonic()
            for bus, one in zip(buses, series):
                if bus.process.poll() is not None:
                    raise RuntimeError(f"{bus.kind} exited with status {bus.process.returncode} during the soak")
                one.samples.append(read_sample(one.pid, now - start))
            log(f"{now - start:7.0f}  " + "  ".join(
                f"{s.samples[-1].rss_kib / 1024:9.1f} MiB {s.samples[-1].fds:5d} fds" for s in series)
                + ("  " + buses[0].stats() if diagnose_dir is not None else ""))
            if diagnose_dir is not None and not snapshots and now - start >= warmup:
                snapshots.append(os.path.join(diagnose_dir, "after-warmup.snapshot"))
                buses[0].snapshot(snapshots[-1])
            if now >= end:
                break
            next_sample += interval
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
        if diagnose_dir is not None:
            snapshots.append(os.path.join(diagnose_dir, "end.snapshot"))
            buses[0].snapshot(snapshots[-1])
        for load, one in zip(loads, series):
            one.tally, one.errors = load.finish()
        for bus in buses:
            bus.stop()  # before reading the logs: the daemon's last words are in them
        for path, one in zip(log_paths, series):
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            one.log_lines = len(lines)
            one.log_tail = lines[-5:]
    if diagnose_dir is not None and len(snapshots) == 2:
        print_growth(*snapshots, top=25)
    return series


def report(series: list[Series], warmup: float, bound: float, interval: float) -> tuple[str, bool]:
    """The table of samples (one row per minute or so) and the verdict, and whether every daemon passed."""
    lines = []
    step = max(1, round(60 / interval))
    lines.append(f"{'t (s)':>7}  " + "  ".join(f"{s.kind + ' RSS MiB':>18} {'fds':>5}" for s in series))
    count = min(len(s.samples) for s in series)
    for i in list(range(0, count, step)) + ([count - 1] if (count - 1) % step else []):
        lines.append(f"{series[0].samples[i].t:7.0f}  " + "  ".join(
            f"{s.samples[i].rss_kib / 1024:18.1f} {s.samples[i].fds:5d}" for s in series))
    ok = True
    lines.append("")
    for one in series:
        value = one.growth(warmup)
        trend = one.slope(warmup)
        first = one.samples[0].rss_kib / 1024
        last = one.samples[-1].rss_kib / 1024
        fds = [s.fds for s in one.samples if s.t >= warmup]
        passed = value is not None and value < bound and one.tally.get("errors", 0) == 0
        ok = ok and passed
        growth_text = "n/a (too few samples after the warm-up)" if value is None else f"{value:+.3f} MiB/min"
        trend_text = "" if trend is None else f" (least-squares slope {trend:+.3f})"
        lines.append(f"{one.kind}: RSS {first:.1f} -> {last:.1f} MiB; high-water growth after {warmup:.0f}s "
                     f"{growth_text}{trend_text} (bound {bound} MiB/min); "
                     f"fds after warm-up {min(fds, default=0)}..{max(fds, default=0)}; "
                     f"zombie children {one.samples[-1].zombies}: {'PASS' if passed else 'FAIL'}")
        lines.append("  load: " + ", ".join(f"{k}={v}" for k, v in sorted(one.tally.items())))
        for error in one.errors:
            lines.append(f"  load error: {error}")
        lines.append(f"  daemon log: {one.log_lines} lines" + ("; the last:" if one.log_tail else ""))
        lines.extend(f"    {line}" for line in one.log_tail)
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--traced-daemon"]:
        return traced_daemon(argv[1], argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    p.add_argument("--buses", default="busd,dbus-daemon", help="comma-separated daemons (default busd,dbus-daemon)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the verdict (default 60)")
    p.add_argument("--bound", type=float, default=0.1, help="largest acceptable high-water RSS growth, MiB/min (default 0.1)")
    p.add_argument("--rate", type=float, default=1.0, help="scale of the load (default 1.0)")
    p.add_argument("--json", action="store_true", help="print the series as JSON instead of the table")
    p.add_argument("--logs", metavar="DIR", help="keep each daemon's log in DIR/KIND.log")
    p.add_argument("--diagnose", action="store_true",
                   help="run busd alone under tracemalloc and print what grew after the warm-up")
    args = p.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    kinds = ["busd-traced"] if args.diagnose else args.buses.split(",")
    with ExitStack() as stack:
        diagnose_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-diagnose-")) \
            if args.diagnose else None
        series = soak(kinds, args.minutes, args.interval, args.rate, log, diagnose_dir, args.warmup, args.logs)
    text, ok = report(series, args.warmup, args.bound, args.interval)
    if args.json:
        print(json.dumps({"warmup_seconds": args.warmup, "bound_mib_per_min": args.bound, "passed": ok,
                          "buses": [s.as_json(args.warmup) for s in series]}, indent=1))
        log(text)
    else:
        print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
