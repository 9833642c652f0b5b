"""The guard of tests/unit/conftest.py: a unit test that starts a process fails, so the split stays true."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import StartsAProcess


def test_a_unit_test_cannot_run_a_program() -> None:
    with pytest.raises(StartsAProcess):
        subprocess.run(["true"])


def test_a_unit_test_cannot_fork() -> None:
    with pytest.raises(StartsAProcess):
        os.fork()
