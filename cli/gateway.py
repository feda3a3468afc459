"""The coordinator's public address: HAProxy in front of the SuperLink, Fleet API only.

Flower 1.42 serves its Fleet API (nodes), Control API (``flwr run``, ``ls``, ``log``,
``stop``, ``supernode register``) and Runtime API (ServerApp tasks) on one HTTPS port,
and the open-source Control API has no login. Whoever reaches that port with the public
``ca.pem`` could run, read and stop federations and register nodes of their own. So
``fedpriv server`` binds the SuperLink to 127.0.0.1 only, where the coordinator's own
tools reach it, and puts HAProxy (from the OS packages, not a proxy of ours) on the
public address:

* it terminates TLS with the server certificate;
* it forwards ``/v1/fleet/`` (and ``/health``) to the SuperLink, over TLS checked
  against ``ca.pem``, and health-checks it;
* it answers every other path 403, so nodes reach the Fleet API and nothing else.

Flower's SuperNode authentication signs each Fleet request itself (a signed timestamp in
a header), so it works unchanged through a proxy that terminates TLS.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cli.processes import LaunchError, Service, child_env
from common.files import write_atomic

FLEET_PREFIX = "/v1/fleet/"
HEALTH_PATH = "/health"
DENIED = "fedpriv: this address serves only the Fleet API"
INSTALL_HINT = ("install it from the OS packages (Debian/Ubuntu: apt-get install haproxy; "
                "`bash scripts/setup.sh` does this when run as root)")
# Model updates of a fully fine-tuned MiniLM are ~90 MB: give slow links time.
TRANSFER_TIMEOUT = "10m"


@dataclass(frozen=True)
class TlsFiles:
    """The coordinator's TLS material: what partners trust, what the server presents."""

    ca: Path
    cert: Path
    key: Path


def haproxy_executable() -> str:
    found = shutil.which("haproxy")
    if found is None:
        raise LaunchError(f"`haproxy` not found: fedpriv server puts it in front of the "
                          f"SuperLink so that partners reach only the Fleet API; {INSTALL_HINT}")
    return found


def bind_address(host: str, port: int) -> str:
    """HAProxy's form of a listening address (IPv6 literals need the ipv6@ prefix)."""
    return f"ipv6@{host}:{port}" if ":" in host else f"{host}:{port}"


def haproxy_config(host: str, port: int, bundle: Path, upstream_port: int, ca: Path) -> str:
    """The whole HAProxy configuration: TLS in, Fleet API through, the rest refused."""
    fleet = f"{{ path_beg {FLEET_PREFIX} }} || {{ path {HEALTH_PATH} }}"
    return "\n".join([
        "global",
        "    log stdout format raw local0 info",
        "    maxconn 1024",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    timeout connect 5s",
        "    timeout http-request 30s",
        f"    timeout client {TRANSFER_TIMEOUT}",
        f"    timeout server {TRANSFER_TIMEOUT}",
        "frontend fleet",
        f"    bind {bind_address(host, port)} ssl crt {bundle} alpn http/1.1",
        f'    http-request return status 403 content-type text/plain string "{DENIED}" '
        f"unless {fleet}",
        # Read a refused request's body before answering: a client still sending it
        # would otherwise see a reset connection instead of the 403.
        "    option http-buffer-request",
        "    default_backend superlink",
        "backend superlink",
        f"    option httpchk GET {HEALTH_PATH}",
        # localhost is in the server certificate (fedpriv certs server adds it)
        f"    server superlink 127.0.0.1:{upstream_port} ssl verify required ca-file {ca} "
        "verifyhost localhost check check-ssl inter 1s fall 3 rise 1",
        "",
    ])


class Gateway:
    """HAProxy on the public address, configured and watched by `fedpriv server`."""

    def __init__(self, folder: Path, host: str, port: int, upstream_port: int,
                 tls: TlsFiles, output: IO[str] | None = None) -> None:
        self.folder, self.host, self.port = folder, host, port
        self.upstream_port, self.tls, self.output = upstream_port, tls, output
        self.config = folder / "haproxy.cfg"
        self.log_path = folder / "haproxy.log"
        self.service: Service | None = None

    def write(self) -> Path:
        """The certificate-and-key bundle HAProxy loads, and its configuration, both 0600."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        bundle = self.folder / "server-bundle.pem"
        write_atomic(bundle, self.tls.cert.read_bytes() + self.tls.key.read_bytes(),
                     mode=0o600)
        write_atomic(self.config, haproxy_config(self.host, self.port, bundle,
                                                 self.upstream_port, self.tls.ca).encode(),
                     mode=0o600)
        return self.config

    def start(self, deadline: float, connect_host: str) -> None:
        """Check the configuration, start HAProxy, and wait until it proves both halves:
        the Fleet side reaches a healthy SuperLink, the Control API is refused."""
        binary = haproxy_executable()
        self.write()
        checked = Service("haproxy -c", [binary, "-c", "-q", "-f", str(self.config)],
                          child_env())
        if checked.wait(30) != 0:
            raise LaunchError(f"HAProxy refused its configuration {self.config}: "
                              f"{checked.last_error()}")
        self.service = Service("haproxy", [binary, "-db", "-f", str(self.config)], child_env(),
                               output=self.output, log_path=self.log_path)
        self.check(connect_host, deadline)

    def check(self, connect_host: str, deadline: float) -> None:
        """Health check through the gateway, as a partner and as an outsider would call."""
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        base = f"https://{connect_host}:{self.port}"
        while True:
            if not self.alive():
                raise LaunchError(f"HAProxy stopped: {self.last_error()} (see {self.log_path})")
            health = _status(f"{base}{HEALTH_PATH}", "GET", context)
            if health == 200:
                break
            if time.monotonic() > deadline:
                raise LaunchError(f"the gateway on {self.host}:{self.port} does not reach the "
                                  f"SuperLink (health {health}; see {self.log_path})")
            time.sleep(0.3)
        control = _status(f"{base}/v1/control/list-runs", "POST", context)
        if control != 403:
            raise LaunchError(f"the gateway on {self.host}:{self.port} answers the Control API "
                              f"with {control}, not 403: refusing to run unprotected")

    def alive(self) -> bool:
        return self.service is not None and self.service.alive()

    def last_error(self) -> str:
        return self.service.last_error() if self.service is not None else "not started"

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=5)


def _status(url: str, method: str, context: ssl.SSLContext) -> int | str:
    """The HTTP status of one request, or why there was none."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError) as err:
        with contextlib.suppress(AttributeError):
            return str(err.reason)
        return str(err)
