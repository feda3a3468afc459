"""`fedpriv server`: the coordinator's SuperLink over TLS with node authentication, one run.

Starts ``flower-superlink`` (TLS, ``--enable-supernode-auth``, state in a ``--database``
file so registrations survive restarts), registers the partners' public keys with
``flwr supernode register``, launches the ServerApp with ``flwr run`` and follows its
log until the run finishes, then stops the SuperLink. Flower's CLI reads its connection
from a private ``FLWR_HOME`` in the state dir, so the user's ``~/.flwr`` is untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import server as server_package
from certs import files, node_keys, verify
from cli.flags import add_resume_flag, add_run_config_flags, run_config_from
from cli.processes import (
    LaunchError,
    Service,
    child_env,
    executable,
    sigterm_as_interrupt,
    toml_value,
    wait_for_port,
    warn_insecure,
)
from common.config import RunConfig
from common.errors import ConfigError, require
from common.net import unreachable
from server.rundir import check_run_dir

CONNECTION = "fedpriv"
DEFAULT_PORT = 9092
DEFAULT_STATE_DIR = Path("~/.fedpriv/coordinator")
STARTUP_TIMEOUT = 60.0
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def connect_host(bind_host: str) -> str:
    """The address the coordinator's own tools dial: loopback when bound to all interfaces.

    Flower's SuperLink does the same for its own SuperExec (``resolve_bind_address``).
    """
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


def check_tls_files(certs_dir: Path, host: str) -> TlsFiles:
    """The CA, server certificate and key in ``certs_dir``, checked before Flower sees them."""
    tls = TlsFiles(certs_dir / files.CA_CERT, certs_dir / files.SERVER_CERT,
                   certs_dir / files.SERVER_KEY)
    for path in (tls.ca, tls.cert, tls.key):
        if not path.is_file():
            raise files.CertError(f"{path} not found: make it with `fedpriv certs ca/server "
                                  f"--dir {certs_dir}` (or pass --certs-dir)")
    verify.check_certificate(tls.ca)
    verify.check_certificate(tls.cert, expect_host=host)
    verify.check_key_pair(tls.cert, tls.key)
    verify.check_chain(tls.cert, tls.ca)
    return tls


def admitted_keys(keys_dir: Path | None, extra: list[Path]) -> list[Path]:
    """Every ``node-*.pub`` in ``keys_dir`` plus ``extra``, each checked like Flower will."""
    found = sorted(keys_dir.glob("node-*.pub")) if keys_dir and keys_dir.is_dir() else []
    keys = list(dict.fromkeys([*found, *extra]))
    for path in keys:
        verify.check_node_public_key(path)
    return keys


def find_app_dir(explicit: Path | None = None) -> Path:
    """The folder whose pyproject.toml declares the Flower app (the fedpriv checkout)."""
    candidates = [explicit] if explicit else [Path(server_package.__file__).resolve().parents[1]]
    for folder in candidates:
        pyproject = folder / "pyproject.toml"
        try:
            components = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["components"]
        except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
            continue
        if "serverapp" in components and "clientapp" in components:
            return folder.resolve()
    where = explicit or candidates[0]
    raise ConfigError(f"no Flower app at {where}: expected a pyproject.toml with "
                      "[tool.flwr.app.components]; run from a fedpriv checkout (pip install -e) "
                      "or pass --app-dir")


def write_flwr_home(home: Path, address: str, tls: TlsFiles | None) -> Path:
    """A private ``$FLWR_HOME/config.toml`` whose default connection is this SuperLink."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["[superlink]", f"default = {toml_value(CONNECTION, 'connection')}", "",
             f"[superlink.{CONNECTION}]", f"address = {toml_value(address, 'address')}"]
    if tls is None:
        lines.append("insecure = true")
    else:  # Flower refuses a relative root-certificates path
        lines.append(f"root-certificates = {toml_value(str(tls.ca.resolve()), 'certs')}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


class FlwrCli:
    """Flower's ``flwr`` command against our connection, with JSON output."""

    def __init__(self, home: Path) -> None:
        self.home, self.bin = home, executable("flwr")

    def env(self) -> dict[str, str]:
        return child_env(FLWR_HOME=str(self.home))

    def call(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run ``flwr ARGS --format json``; a failure raises LaunchError with Flower's reason."""
        command = [self.bin, *args, "--format", "json"]
        try:
            done = subprocess.run(command, env=self.env(), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"`flwr {args[0]}` did not answer within {timeout:.0f} s") from None
        start = done.stdout.find("{")
        try:
            result = json.loads(done.stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            result = {}
        if not result.get("success"):
            message = str(result.get("error-message") or done.stderr or done.stdout)
            reason = [line.strip() for line in message.splitlines() if line.strip()]
            raise LaunchError(f"`flwr {' '.join(args[:2])}` failed: "
                              f"{reason[-1] if reason else f'exit code {done.returncode}'}")
        return result


class Coordinator:
    """A running SuperLink and the ``flwr`` commands that drive it; a context manager."""

    def __init__(self, *, state_dir: Path, host: str, port: int, database: Path,
                 tls: TlsFiles | None, output: IO[str] | None = None) -> None:
        self.state_dir, self.host, self.port = state_dir, host, port
        self.database, self.tls = database, tls
        self.address = f"{connect_host(host)}:{port}"
        self.home = write_flwr_home(state_dir / "flwr-home", self.address, tls)
        self.flwr = FlwrCli(self.home)
        self.output = output
        self.link: Service | None = None

    def command(self) -> list[str]:
        command = [executable("flower-superlink"), "--host", self.host, "--port", str(self.port),
                   "--database", str(self.database), "--disable-runtime-dependency-installation"]
        if self.tls is None:
            return [*command, "--insecure"]
        return [*command, "--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile",
                str(self.tls.cert), "--ssl-keyfile", str(self.tls.key), "--enable-supernode-auth"]

    def __enter__(self) -> Coordinator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        host = connect_host(self.host)
        if unreachable(host, self.port, timeout=1) is None:
            raise LaunchError(f"port {self.port} on {host} is already in use (another "
                              "SuperLink?); stop it or choose another --port")
        self.database.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "superlink.log"
        self.link = Service("flower-superlink", self.command(),
                            child_env(FLWR_HOME=str(self.home)), output=self.output,
                            log_path=log_path)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            wait_for_port(host, self.port, deadline, self.link)
            self._wait_for_control_api(deadline)
        except BaseException:
            self.stop()
            raise

    def _wait_for_control_api(self, deadline: float) -> None:
        while True:
            try:
                self.flwr.call("supernode", "ls", CONNECTION, timeout=30)
                return
            except LaunchError as err:
                assert self.link is not None
                if not self.link.alive() or time.monotonic() > deadline:
                    raise LaunchError(f"the SuperLink on {self.address} does not answer: {err} "
                                      f"(see {self.link.log_path})") from None
                time.sleep(1)

    def stop(self) -> None:
        if self.link is not None:
            self.link.stop()

    def register(self, public_key: Path) -> str:
        """Admit a node's key; registering a key twice is fine (returns 'already registered')."""
        try:
            result = self.flwr.call("supernode", "register", str(public_key), CONNECTION)
        except LaunchError as err:
            if "already in use" in str(err):
                return "already registered"
            raise
        return f"node id {result['node-id']}"

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.flwr.call("supernode", "ls", CONNECTION)["nodes"])

    def start_run(self, app_dir: Path, cfg: RunConfig) -> int:
        """Launch the ServerApp with exactly this run config; returns the run id."""
        config_file = self.state_dir / f"run-config-{time.strftime('%Y%m%d-%H%M%S')}.toml"
        config_file.write_text("".join(f"{key} = {toml_value(value, '--' + key)}\n"
                                       for key, value in cfg.to_flat().items()))
        result = self.flwr.call("run", str(app_dir), CONNECTION, "--run-config", str(config_file),
                                timeout=600)
        return int(result["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        return dict(self.flwr.call("ls", CONNECTION, "--run-id", str(run_id))["runs"][0])

    def follow(self, run_id: int, timeout: float | None) -> dict[str, Any]:
        """Stream the run's log to our output until it finishes; its final info from `flwr ls`.

        The log stream ends when the run is finished (``flwr log --stream``); if it breaks
        off earlier, the status is polled instead. Past ``timeout`` the run is stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = Service("flwr log", [self.flwr.bin, "log", str(run_id), CONNECTION, "--stream"],
                         self.flwr.env(), output=self.output or sys.stdout)
        try:
            while True:
                if not stream.alive():
                    info = self.run_info(run_id)
                    if info["status"].startswith("finished"):
                        return info
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop_run(run_id)
                    raise LaunchError(f"run {run_id} did not finish within --timeout "
                                      f"{timeout:.0f} s; it was stopped")
                time.sleep(1 if stream.alive() else 5)
        finally:
            stream.stop(grace=2)

    def stop_run(self, run_id: int) -> None:
        """Best effort: a SuperLink that is already shutting down cannot be asked."""
        with contextlib.suppress(LaunchError):
            self.flwr.call("stop", str(run_id), CONNECTION, timeout=30)


# --------------------------------------------------------------------------- command line


def add_server_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``fedpriv server``: where the SuperLink listens, its TLS files, the run."""
    link = parser.add_argument_group("SuperLink")
    link.add_argument("--certs-dir", type=Path, default=files.DEFAULT_DIR,
                      help="folder with ca.pem, server.pem, server.key (`fedpriv certs ca/server`; "
                           f"default {files.DEFAULT_DIR})")
    link.add_argument("--keys-dir", type=Path, default=None,
                      help="folder whose node-*.pub keys are admitted (default: --certs-dir, "
                           "where `fedpriv certs admit` keeps them)")
    link.add_argument("--admit", type=Path, action="append", default=[], metavar="FILE",
                      help="also admit this node public key (repeatable)")
    link.add_argument("--host", default="127.0.0.1",
                      help="interface to listen on; 0.0.0.0 for partners on other machines "
                           "(default 127.0.0.1)")
    link.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help=f"port of the SuperLink (Fleet and Control API; default {DEFAULT_PORT})")
    link.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                      help="the coordinator's own files: Flower connection (flwr-home/), "
                           f"superlink.log, run configs (default {DEFAULT_STATE_DIR})")
    link.add_argument("--database", type=Path, default=None,
                      help="SuperLink state (runs, registered nodes), kept across restarts "
                           "(default STATE_DIR/superlink.db)")
    link.add_argument("--app-dir", type=Path, default=None,
                      help="the Flower app to run (default: this fedpriv checkout)")
    link.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                      help="stop the run if it has not finished after this long (default: none)")
    link.add_argument("--keep-running", action="store_true",
                      help="keep the SuperLink up after the run (Ctrl-C stops it)")
    link.add_argument("--insecure", action="store_true",
                      help="plain-text HTTP without TLS and without node authentication "
                           "(tests only)")
    add_run_config_flags(parser)
    add_resume_flag(parser)
    return parser


def _run_config(args: argparse.Namespace) -> RunConfig:
    cfg = run_config_from(args, {"run-dir": f"runs/{time.strftime('%Y%m%d-%H%M%S')}"})
    # The ServerApp runs in another process with another working directory.
    overrides: dict[str, str] = {"run-dir": str(Path(cfg.federation.run_dir).resolve())}
    if cfg.data.data_path:
        overrides["data-path"] = str(Path(cfg.data.data_path).resolve())
    return cfg.replace(**overrides)


def run_server_command(args: argparse.Namespace) -> int:
    """``fedpriv server``: check everything, start the SuperLink, run, stop."""
    require(0 < args.port < 65536, "--port", args.port, "must be 1-65535")
    require(args.timeout >= 0, "--timeout", args.timeout, "must be >= 0 (0 = no limit)")
    if args.insecure and args.admit:
        raise ConfigError("--insecure cannot be combined with --admit: Flower's SuperNode "
                          "authentication needs TLS; drop --insecure")
    cfg = _run_config(args)
    state_dir = args.state_dir.expanduser().resolve()
    tls = None if args.insecure else check_tls_files(args.certs_dir, connect_host(args.host))
    keys = [] if args.insecure else admitted_keys(args.keys_dir or args.certs_dir, args.admit)
    if not args.insecure and not keys:
        raise ConfigError(f"no node public keys to admit in {args.keys_dir or args.certs_dir}: "
                          "add partners with `fedpriv certs admit NAME FILE` or --admit FILE")
    app_dir = find_app_dir(args.app_dir)
    check_run_dir(cfg)
    if args.insecure:
        warn_insecure("the SuperLink accepts any node")
    database = (args.database or state_dir / "superlink.db").expanduser().resolve()
    with sigterm_as_interrupt(), Coordinator(state_dir=state_dir, host=args.host,
                                             port=args.port, database=database, tls=tls) as link:
        scheme = "http (INSECURE)" if tls is None else "TLS"
        print(f"fedpriv: SuperLink on {args.host}:{args.port} ({scheme}); log "
              f"{state_dir / 'superlink.log'}; database {database}", flush=True)
        for key in keys:
            fingerprint = node_keys.ssh_fingerprint(verify.check_node_public_key(key))
            print(f"fedpriv: admitted {key} ({fingerprint}): {link.register(key)}", flush=True)
        run_id = link.start_run(app_dir, cfg)
        print(f"fedpriv: started run {run_id}; waiting for "
              f"{cfg.federation.min_available_clients} node(s); run directory "
              f"{cfg.federation.run_dir}", flush=True)
        try:
            info = link.follow(run_id, args.timeout or None)
        except KeyboardInterrupt:
            link.stop_run(run_id)
            raise
        _report(run_id, info)
        if info["status"] != COMPLETED:
            raise LaunchError(f"run {run_id} {info['status']}: "
                              f"{info.get('status-details') or 'see the log above'}")
        if args.keep_running:
            print(f"fedpriv: SuperLink keeps running on {args.host}:{args.port}; "
                  "Ctrl-C stops it", flush=True)
            assert link.link is not None
            code = link.link.wait()
            raise LaunchError(f"the SuperLink exited with code {code}: {link.link.last_error()}")
    return 0


def _report(run_id: int, info: dict[str, Any]) -> None:
    traffic = info.get("network-traffic", {})
    print(f"fedpriv: run {run_id} {info['status']} after {float(info['elapsed']):.1f} s; "
          f"network traffic in {traffic.get('inbound-bytes', 0):,} B, out "
          f"{traffic.get('outbound-bytes', 0):,} B", flush=True)
