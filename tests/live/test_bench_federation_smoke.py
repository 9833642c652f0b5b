"""Smoke test of benchmarks/bench_federation.py, run briefly so it does not rot: every figure, on both paths."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.live
def test_bench_federation_produces_every_figure_on_both_paths() -> None:
    run = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_federation.py"), "--seconds", "0.1",
                          "--only", "seq", "signal", "--subscribers", "2", "--json"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert set(report["results"]) == {"seq", "signal-2"} and not report["failures"]
    for name, headline in (("seq", "calls/s"), ("signal-2", "deliveries/s")):
        for path in ("one-bus", "federation"):
            figures = report["results"][name][path]
            assert figures[headline] > 0, (name, path, figures)
            assert all(math.isfinite(value) and value >= 0 for value in figures.values()), (name, path, figures)
    assert report["results"]["seq"]["federation"]["p99 latency (µs)"] > 0
