"""Addresses and reachability: HOST:PORT parsing and a TCP probe, shared by every layer."""

from __future__ import annotations

import socket


def split_host_port(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) as (host, port), or None if it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not (sep and host and port.isdecimal() and 0 < int(port) < 65536):
        return None
    return host, int(port)


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails, or None when something accepts it."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:.0f} s (firewall?)"
    except OSError as err:
        return err.strerror or str(err)
