"""Short soak (issue 13): a minute and a half of mixed traffic; the daemon's RSS must stop rising after the warm-up.

benchmarks/soak.py's load (calls, signals with subscribers, connection churn, an
activatable service killed with SIGKILL and restarted, junk and never-reading
clients, a slow consumer) runs against one bus for SECONDS; the daemon's RSS and
fds are read from /proc every INTERVAL seconds. After WARMUP seconds the RSS's
high-water growth (soak.high_water_growth: the highest RSS of the window's last
quarter against its first quarter's, MiB per minute) must stay under BOUND.

Why BOUND is what it is: the issue measured busd rising 2.6 MB/min over its first
3 minutes (0.5-0.7 MB/min over 10) where dbus-daemon stays flat. This test's
window lies in those first minutes and its load is the soak's default, so a
leak of the reported size raises the high-water mark by well over 1 MiB/min. A
flat daemon's RSS still swings by about 1.3 MiB within seconds (a never-reading
peer's queue fills to its cap and is dropped); a least-squares slope over a
30-second window read such a swing as +2.2 MiB/min once in CI, while the
high-water marks of the quarters moved 0.2 MiB. The long run (10 minutes) is
`python3 benchmarks/soak.py`, see README's "Tests".
"""

from __future__ import annotations

import os
import sys

import pytest

from buses import busd_available

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import soak  # noqa: E402

pytestmark = pytest.mark.load  # .ci/run runs it once, in its first pass (pyproject: markers)

SECONDS = float(os.environ.get("BUSD_SOAK_SECONDS", "80"))
WARMUP = 30.0  # seconds: start-up, first connections, the first never-reading peer's queue, the caches filling
INTERVAL = 2.0
BOUND = 1.0  # MiB per minute, see the module docstring
FD_SLACK = 16  # fds the load may hold open at one moment beyond the warm-up's (churn, junk, activation)


# busd passes since reads stopped fragmenting glibc's heap (a fresh 256 KiB bytes per read) and a departed
# caller's pending calls stopped keeping its Connection (4.2 MiB/min before both, 1.6 after the first).
@pytest.mark.parametrize("kind", ["busd", "dbus-daemon"])
def test_rss_stays_flat_under_mixed_traffic(kind: str) -> None:
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    lines: list[str] = []
    series = soak.soak([kind], SECONDS / 60, INTERVAL, 1.0, lines.append, warmup=WARMUP)[0]
    table, _ok = soak.report([series], WARMUP, BOUND, INTERVAL)
    report = f"{table}\nsamples:\n" + "\n".join(lines)
    assert not series.errors, report
    for work in ("calls", "received", "slow-received", "connections", "activations", "junk-sasl"):
        assert series.tally.get(work, 0) > 0, f"the load did no {work}: {report}"
    growth = series.growth(WARMUP)
    assert growth is not None and growth < BOUND, report
    fds = [s.fds for s in series.samples if s.t >= WARMUP]
    assert max(fds) - min(fds) <= FD_SLACK, report
    assert series.samples[-1].zombies == 0, report
