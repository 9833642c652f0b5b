"""Unit tests run in this process only: one that starts a process belongs in tests/live."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest


class StartsAProcess(AssertionError):
    pass


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise StartsAProcess("a unit test started a process: move it to tests/live")


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse)
    monkeypatch.setattr(os, "fork", _refuse)
    monkeypatch.setattr(os, "posix_spawn", _refuse)
    monkeypatch.setattr(os, "posix_spawnp", _refuse)

