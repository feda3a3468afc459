"""Real processes for e2e tests: free ports, a process wrapper, whole-family cleanup."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from cli.processes import child_env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # comm may hold spaces and parentheses: ppid is the 2nd field after the last ')'
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree[ppid].append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, whatever session or process group it moved to."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Proc:
    """A command in a session of its own, output to a file.

    ``kill`` ends its process group and every descendant, including those Flower puts
    in sessions of their own (``flower-superexec`` and the apps it starts).
    """

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log = args, log
        with open(log, "w") as out:
            self.popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first match of `pattern` in the output; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"no {pattern!r} from {self.args[:4]} (exit "
                             f"{self.popen.poll()}):\n{self.tail()}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args[:4]} still running after {timeout} s:\n"
                                 f"{self.tail()}") from None

    def kill(self) -> None:
        family = descendants(self.popen.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        for pid in family + [p for f in family for p in descendants(f)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def crash(proc: Proc) -> None:
    """SIGKILL the process and everything it started, at once: nothing gets to clean up."""
    family = [proc.popen.pid, *descendants(proc.popen.pid)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.popen.wait(10)


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """A list to `start` processes into; all of them (and their families) end on exit."""
    started: list[Proc] = []
    try:
        yield started
    except BaseException:
        # What every process said last, beside the failure: a hang on one node shows in
        # its own log, not in the coordinator's.
        for proc in started:
            print(f"--- {proc.log}:\n{proc.tail(25)}")
        raise
    finally:
        for proc in reversed(started):
            proc.kill()


def start(started: list[Proc], args: list[str], log: Path, **env: str) -> Proc:
    """Start `args` with the environment `fedpriv` gives its children, plus `env`."""
    proc = Proc(args, log, child_env(**env))
    started.append(proc)
    return proc


def wait_until(condition: Callable[[], bool], timeout: float, what: str, *procs: Proc) -> None:
    """Poll `condition`; on timeout fail naming `what`, with the processes' last output."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(p.tail() for p in procs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.5)


def listening(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is accepted now."""
    try:
        with socket.create_connection((host, port), 1):
            return True
    except OSError:
        return False
