"""Starting, watching and stopping Flower's own processes for `fedpriv server`/`client`.

Flower's daemons (``flower-superlink``, ``flower-supernode``) and its ``flwr`` CLI are
run as child processes in our own process group: a Ctrl-C in the terminal reaches them
directly, a SIGTERM to us is forwarded, and whoever kills our group kills them too.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from common.errors import ConfigError, FedPrivError
from common.net import split_host_port, unreachable

INSECURE_BANNER = "!" * 78
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")


class LaunchError(FedPrivError):
    """A Flower process could not be started, or it stopped with an error."""


def warn_insecure(what: str) -> None:
    """Print a loud warning that traffic (model updates, privacy records) is plain text."""
    print(f"{INSECURE_BANNER}\nWARNING: --insecure: {what} WITHOUT TLS. Model updates, "
          "privacy records and node identities\ntravel in plain text and anyone on the path "
          f"can read or change them. Tests only.\n{INSECURE_BANNER}", file=sys.stderr,
          flush=True)


def private_umask() -> None:
    """What this process and its children create is its owner's only (umask 077).

    Flower creates its database, logs and run configs with the default mode; under this
    umask they come out 0600 (folders 0700) without a chmod racing them.
    """
    os.umask(0o077)


def executable(name: str) -> str:
    """Path of a console script installed with Flower, preferring our own environment."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"`{name}` not found: install fedpriv's dependencies (flwr) in "
                          "this environment")
    return found


def child_env(**extra: str) -> dict[str, str]:
    """Our environment with this interpreter's bin folder first on PATH.

    The SuperLink and SuperNode start ``flower-superexec``, ``flwr-serverapp`` and
    ``flwr-clientapp`` by name, so they must find ours even when the venv is not active.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) as a (host, port) pair, or a one-line error."""
    address = split_host_port(text)
    if address is None:
        raise ConfigError(f"invalid {flag} {text!r}: expected HOST:PORT, e.g. "
                          "coord.example.org:9092")
    return address


def toml_value(value: bool | int | float | str, key: str) -> str:
    """One value in the ``key=value`` syntax Flower's ``--node-config`` parser accepts.

    Flower splits on a regex that allows a quoted string without its own quote
    character inside, so a string is written as a TOML literal string ('...', no escapes)
    or, if it contains a single quote, as a basic string ("...").
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"invalid {key} {value!r}: must be a finite number")
        return repr(value)
    if any(ch in value for ch in "\n\r"):
        raise ConfigError(f"invalid {key} {value!r}: must not contain line breaks")
    if "'" not in value:
        return f"'{value}'"
    if '"' in value:
        raise ConfigError(f"invalid {key} {value!r}: Flower cannot pass a value holding "
                          "both ' and \" characters; rename the file or folder")
    return '"' + value.replace("\\", "\\\\") + '"'


def key_values(pairs: Mapping[str, bool | int | float | str]) -> str:
    """``k1=v1 k2='v 2'``: the ``--node-config``/``--run-config`` form of ``pairs``."""
    return " ".join(f"{key}={toml_value(value, key)}" for key, value in pairs.items())


def wait_for_port(host: str, port: int, deadline: float, process: Service) -> None:
    """Block until something accepts TCP connections on host:port, or fail."""
    while True:
        if not process.alive():
            raise LaunchError(f"{process.name} exited with code {process.returncode} before "
                              f"it listened on {host}:{port}: {process.last_error()}")
        if unreachable(host, port, timeout=1) is None:
            return
        if time.monotonic() > deadline:
            raise LaunchError(f"{process.name} did not listen on {host}:{port} in time: "
                              f"{process.last_error()}")
        time.sleep(0.2)


class Service:
    """One child process whose output is copied line by line to a file or stream.

    The last lines are kept so an error can name what the process itself said.
    """

    def __init__(self, name: str, command: list[str], env: Mapping[str, str],
                 output: IO[str] | None = None, log_path: Path | None = None,
                 keep_lines: int = 200) -> None:
        self.name, self.command = name, command
        self.tail: deque[str] = deque(maxlen=keep_lines)
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
        self._output = output
        try:
            self.process = subprocess.Popen(
                command, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        except OSError as err:
            self._close_log()
            raise LaunchError(f"cannot start {name} ({command[0]}): {err.strerror}") from None
        self._reader = threading.Thread(target=self._copy, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _copy(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.tail.append(line.rstrip("\n"))
            for sink in (self._log, self._output):
                if sink is not None:
                    with contextlib.suppress(ValueError, OSError):
                        sink.write(line)
                        sink.flush()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """The exit code once the process ended and its output is copied."""
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def output(self) -> str:
        return "\n".join(self.tail)

    def last_error(self) -> str:
        """The most telling line the process printed: its last error, else its last line."""
        reported = flower_exit(self.tail)
        if reported is not None:
            return f"Flower exit code {reported[0]}: {reported[1]}"
        return error_line(self.tail) or "(no output)"

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (Flower's graceful shutdown), then SIGKILL after ``grace`` seconds."""
        try:
            if self.alive():
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
            self._reader.join(5)
            return self.process.returncode
        finally:
            self._close_log()


def flower_exit(lines: deque[str] | list[str]) -> tuple[int, str] | None:
    """Flower's own exit report (``Exit Code: N`` and its message) as (N, one line)."""
    clean = [_strip_ansi(line).strip() for line in lines]
    for start in range(len(clean) - 1, -1, -1):
        match = _EXIT_CODE.search(clean[start])
        if match is None:
            continue
        words = []
        for line in clean[start + 1:]:
            if not line or line.startswith("For more information"):
                break
            words.append(line)
        return int(match.group(1)), " ".join(words)
    return None


def error_line(lines: deque[str] | list[str]) -> str:
    """The last line that looks like an error (Flower's ERROR lines, exceptions)."""
    markers = ("ERROR", "Error", "error", "refused", "Failed", "failed", "Exit Code")
    for line in reversed(lines):
        clean = _strip_ansi(line).strip()
        if clean and any(m in clean for m in markers):
            return clean
    for line in reversed(lines):
        if _strip_ansi(line).strip():
            return _strip_ansi(line).strip()
    return ""


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so ``finally`` blocks stop our children either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
