"""Network namespaces on a bridge: hosts that reach each other only over a LAN."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"fpprobe{os.getpid()}"
    added = ip("netns", "add", probe)
    if added.returncode != 0:
        return f"`ip netns add` is not allowed here: {added.stderr.strip()}"
    ip("netns", "del", probe)
    return None


def _bridge_steps(hosts: list[str], spaces: dict[str, tuple[str, str]], tag: str
                  ) -> list[tuple[str, ...]]:
    hub, hub_ip = spaces[hosts[0]]
    steps = [("-n", hub, "link", "add", "br0", "type", "bridge"),
             ("-n", hub, "addr", "add", f"{hub_ip}/24", "dev", "br0"),
             ("-n", hub, "link", "set", "br0", "up")]
    for i, host in enumerate(hosts[1:], start=1):
        ns, addr = spaces[host]
        near, far = f"v{tag}{i}a", f"v{tag}{i}b"
        steps += [("link", "add", near, "netns", hub, "type", "veth", "peer", "name", far,
                   "netns", ns),
                  ("-n", hub, "link", "set", near, "master", "br0", "up"),
                  ("-n", ns, "addr", "add", f"{addr}/24", "dev", far),
                  ("-n", ns, "link", "set", far, "up")]
    return steps


@contextlib.contextmanager
def lan(hosts: list[str], subnet: str = "10.231.7") -> Iterator[dict[str, tuple[str, str]]]:
    """One namespace per host on a bridge in the first one: {host: (namespace, ip)}."""
    tag = uuid.uuid4().hex[:6]
    spaces = {host: (f"fp{tag}{i}", f"{subnet}.{i + 1}") for i, host in enumerate(hosts)}
    made: list[str] = []
    try:
        for ns, _ in spaces.values():
            assert ip("netns", "add", ns).returncode == 0
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for step in _bridge_steps(hosts, spaces, tag):
            done = ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield spaces
    finally:
        for ns in made:
            ip("netns", "del", ns)
