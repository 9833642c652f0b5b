"""Every shell command the README shows runs as written and prints what the README shows.

The README's shell examples are fenced ```sh blocks (commands only) and
```console blocks (`$ command`, then the output the command must print).
Each block runs in a fresh bash, as a reader would paste it into a new
terminal, from the repository's root, with a busd started by the test as its
session bus; state carries from one command to the next within the block
(exports, background jobs).  Each command must exit 0.

A command that cannot run in a test is listed in EXCLUDED with the reason; a
command that runs until interrupted is listed in LONG_RUNNING with the output
that shows it is working: it is started, that output awaited, then stopped with
SIGINT as Ctrl-C would, and must exit 0.  Any other command is run and
checked, so a command added to the README is tested by default.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from buses import RunningBus, busd_available, start_bus
from busclient import LineWatcher

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHELL_LANGUAGES = ("sh", "console")
OTHER_LANGUAGES = ("python", "xml", "text")
# A single command may take this long before the test fails (a guard, not an assertion).
COMMAND_TIMEOUT = 60.0
# Files the README's commands write into the directory they run in; removed after each block.
FILES_WRITTEN = ("busd.pid", "bus.pcapng")

# Commands that cannot run in a test: a regular expression on the command, and why.
EXCLUDED: dict[str, str] = {
    r"^python3 -m pip install\b": "installs into the Python running this test; the suite already runs on the "
                                  "installed package (the rest of the line after '&&' is tested)",
    r"^python3 -m pytest\b": "the test suite this test belongs to",
}

# Commands that run until interrupted: a regular expression on the command, and the line (a regular
# expression, on standard output or standard error) showing that it works.
LONG_RUNNING: dict[str, tuple[str, str]] = {
    r"^busd --print-address$": ("stdout", r"^unix:"),
    r"^busd --upstream=session\b": ("stdout", r"^unix:"),
    r"^python3 clients/examples/subscriber\.py$": ("stdout", r"^tick \d+ from :"),
    r"^busdctl --user monitor dev\.busd\.Example1\b": ("stdout", r"Member=Tick"),
    r"^busdctl --user capture\b": ("stderr", r"^Monitoring bus message stream\.$"),
}


@dataclass
class Command:
    text: str                   # as the README shows it, continuation lines included
    expected: list[str] | None  # the output the README shows under it (console blocks only)
    line: int


@dataclass
class Block:
    language: str
    line: int
    commands: list[Command]


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Every fenced code block: its language, the line of its opening fence, its lines."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[index])
        if opening is None:
            index += 1
            continue
        end = lines.index("```", index + 1)
        blocks.append((opening.group(1), index + 1, lines[index + 1:end]))
        index = end + 1
    return blocks


def parse_block(language: str, first_line: int, lines: list[str]) -> Block:
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        line, number = lines[index], first_line + index + 1
        index += 1
        if language == "console":
            if not line.startswith("$ "):
                assert commands and commands[-1].expected is not None, f"README.md:{number}: output before a command"
                commands[-1].expected.append(line)
                continue
            line = line[2:]
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line += "\n" + lines[index]
            index += 1
        commands.append(Command(line, [] if language == "console" else None, number))
    return Block(language, first_line, commands)


def readme_blocks() -> list[Block]:
    return [parse_block(language, line, lines) for language, line, lines in fenced_blocks(README.read_text())
            if language in SHELL_LANGUAGES]


def bare(command: str) -> str:
    """The command without its trailing comment, to match against the tables."""
    return re.sub(r"\s+#.*$", "", command.replace("\\\n", " ")).strip()


def excluded_reason(command: str) -> str | None:
    return next((reason for pattern, reason in EXCLUDED.items() if re.search(pattern, command)), None)


def runnable_part(command: str) -> str | None:
    """What the test runs of `command`: all of it, the part after an excluded 'A && ', or nothing."""
    text = bare(command)
    if excluded_reason(text) is None:
        return text
    if " && " in text:
        rest = text.split(" && ", 1)[1]
        return rest if excluded_reason(rest) is None else None
    return None


def long_running(command: str) -> tuple[str, str] | None:
    return next((ready for pattern, ready in LONG_RUNNING.items() if re.search(pattern, command)), None)


def client_path() -> str:
    """PATH with this Python's directories first, so README's python3, busd and busdctl are the ones tested."""
    first = [os.path.dirname(sys.executable), sysconfig.get_path("scripts")]
    rest = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(dict.fromkeys(first + rest))


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


class ReadmeShell:
    """One bash running a block's commands in order, like a terminal: exports and jobs persist.

    Each command's output goes to files of its own (a background job keeps writing to
    them); after each command the shell writes a marker line with the exit status.
    """

    MARKER = "__readme_command_done__"

    def __init__(self, env: dict[str, str]) -> None:
        self.workdir = tempfile.mkdtemp(prefix="readme-test-")
        self.process = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=REPO, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.markers = LineWatcher(self.process.stdout)
        self.count = 0

    def _send(self, script: str) -> int:
        self.process.stdin.write(script + f"\nprintf '%s %d\\n' {self.MARKER} $?\n")
        self.process.stdin.flush()
        line = self.markers.wait_for(f"^{self.MARKER} ", COMMAND_TIMEOUT)
        return int(line.split()[1])

    def run(self, command: str) -> Ran:
        self.count += 1
        out, err = (os.path.join(self.workdir, f"{self.count}.{stream}") for stream in ("out", "err"))
        status = self._send(f"{{ {command}\n}} >{out} 2>{err} </dev/null")
        return Ran(status, Path(out).read_text(), Path(err).read_text())

    def environment(self) -> tuple[dict[str, str], str]:
        """The exported variables and the directory a command started now would get."""
        self.count += 1
        env_file, cwd_file = (os.path.join(self.workdir, f"{self.count}.{what}") for what in ("env", "cwd"))
        assert self._send(f"env -0 >{env_file}; pwd >{cwd_file}") == 0
        pairs = Path(env_file).read_text().split("\0")
        return dict(pair.split("=", 1) for pair in pairs if pair), Path(cwd_file).read_text().strip()

    def close(self) -> None:
        """Stop the jobs the block left running (as closing the terminal would), then the shell."""
        self.process.stdin.write("kill $(jobs -p) 2>/dev/null; wait\n")
        self._send("true")
        self.process.stdin.close()
        self.process.wait(timeout=COMMAND_TIMEOUT)
        self.markers.wait_eof()
        shutil.rmtree(self.workdir, ignore_errors=True)


def run_until_ready(shell: ReadmeShell, command: str, stream: str, ready: str) -> tuple[str, int]:
    """Start a command that runs until interrupted, wait for its `ready` line, interrupt it."""
    env, cwd = shell.environment()
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outputs = {"stdout": LineWatcher(process.stdout), "stderr": LineWatcher(process.stderr)}
    try:
        line = outputs[stream].wait_for(ready, COMMAND_TIMEOUT)
        process.send_signal(signal.SIGINT)
        return line, process.wait(timeout=COMMAND_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for watcher in outputs.values():
            watcher.wait_eof()


def stop_forked_daemon() -> None:
    """Stop a busd the block started with --fork and did not stop (a failed block)."""
    pid_file = REPO / "busd.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


BLOCKS = readme_blocks()


@pytest.fixture
def session_bus() -> RunningBus:
    if not busd_available():
        pytest.skip("the busd daemon is not built yet")
    bus = start_bus("busd")
    yield bus
    bus.stop()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{block.line}" for block in BLOCKS])
def test_readme_block_runs_as_written(block: Block, session_bus: RunningBus):
    runnable = [(command, runnable_part(command.text)) for command in block.commands]
    if not any(part for _, part in runnable):
        pytest.skip("; ".join(dict.fromkeys(excluded_reason(part) for command in block.commands
                                            for part in bare(command.text).split(" && "))))
    env = session_bus.client_env()
    env["PATH"] = client_path()
    env["PYTHONUNBUFFERED"] = "1"
    shell = ReadmeShell(env)
    try:
        for command, part in runnable:
            where = f"README.md:{command.line}: {part}"
            if part is None:
                continue
            ready = long_running(part)
            if ready is not None:
                line, status = run_until_ready(shell, part, *ready)
                assert status == 0, f"{where}: exit status {status} after SIGINT (it had printed {line!r})"
                continue
            ran = shell.run(part)
            assert ran.returncode == 0, f"{where}: exit status {ran.returncode}\n{ran.stderr}"
            if command.expected:
                assert ran.stdout.splitlines() == command.expected, where
    finally:
        shell.close()
        stop_forked_daemon()
        for name in FILES_WRITTEN:
            (REPO / name).unlink(missing_ok=True)


def test_readme_shows_shell_commands_only_in_blocks_this_test_runs():
    """No indented code blocks, no unknown languages: a new example cannot escape the test."""
    text = README.read_text()
    languages = {language for language, _, _ in fenced_blocks(text)}
    assert languages <= set(SHELL_LANGUAGES + OTHER_LANGUAGES), languages
    outside_fences = re.sub(r"^```.*?^```$", "", text, flags=re.MULTILINE | re.DOTALL)
    indented = [line for line in outside_fences.splitlines() if line.startswith("    ")]
    assert indented == [], "indented code blocks: fence them as ```sh or ```console"


def test_every_excluded_or_long_running_entry_names_a_readme_command():
    """The tables stay in step with the README: an entry that matches nothing is stale."""
    commands = [part for block in BLOCKS for command in block.commands for part in bare(command.text).split(" && ")]
    parts = [part for part in (runnable_part(command.text) for block in BLOCKS for command in block.commands)
             if part]
    assert [pattern for pattern in EXCLUDED if not any(re.search(pattern, c) for c in commands)] == []
    assert [pattern for pattern in LONG_RUNNING if not any(re.search(pattern, p) for p in parts)] == []
