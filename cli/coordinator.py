"""`fedpriv server`: the coordinator's SuperLink over TLS with node authentication, one run.

What runs, and who can reach what:

* ``flower-superlink`` on 127.0.0.1 only (``--local-port``), TLS, ``--enable-supernode-auth``,
  state in a ``--database`` file, and ``--isolation process`` with a SuperExec secret.
  Its Control and Runtime APIs therefore answer only on this host.
* ``flower-superexec`` with that secret: the only process that can claim the ServerApp
  task (Flower's HMAC-signed claim), and start it.
* HAProxy on the public ``--host``/``--port`` (``cli.gateway``): TLS with the server
  certificate, the Fleet API through, everything else refused.

Then it registers the admitted partners' keys with ``flwr supernode register`` (which
answers only on this host), records which ledger key each node id signs with, launches
the ServerApp with ``flwr run`` (a staged copy of this installation's app), follows its
log until the run finishes, and stops everything. Flower's CLI reads its connection from
a private ``FLWR_HOME`` in the state dir, so the user's ``~/.flwr`` is untouched. The
state dir is 0700 and everything is created under umask 077.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from certs import files, node_keys, verify
from cli.app_package import app_files, fab_hash, find_app_dir, stage
from cli.flags import add_resume_flag, add_run_config_flags, run_config_from
from cli.gateway import Gateway, TlsFiles
from cli.processes import (
    LaunchError,
    Service,
    child_env,
    executable,
    private_umask,
    sigterm_as_interrupt,
    toml_value,
    wait_for_port,
    warn_insecure,
)
from common.config import RunConfig
from common.errors import ConfigError, require
from common.files import ensure_secret, private_dir
from common.ledger.keys import public_key_hex
from common.net import unreachable
from server.admission import AdmittedNode, read_admitted, write_admitted
from server.rundir import check_run_dir

CONNECTION = "fedpriv"
DEFAULT_PORT = 9092
DEFAULT_STATE_DIR = Path("~/.fedpriv/coordinator")
STARTUP_TIMEOUT = 60.0
COMPLETED = "finished:completed"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def connect_host(bind_host: str) -> str:
    """The address the coordinator's own checks dial: loopback when bound to all interfaces.

    Flower's SuperLink does the same for its own SuperExec (``resolve_bind_address``).
    """
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


def free_local_port() -> int:
    """A port on 127.0.0.1 nothing listens on now: the SuperLink's own, by default."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_tls_files(certs_dir: Path, host: str) -> TlsFiles:
    """The CA, server certificate and key in ``certs_dir``, checked before Flower sees them.

    A folder that also holds the CA's private key is refused: with it, whoever can read
    the coordinator's files (a ServerApp runs as its user) could mint server
    certificates and pose as the coordinator to every partner.
    """
    if (certs_dir / files.CA_KEY).exists():
        raise files.CertError(
            f"--certs-dir {certs_dir} holds the CA's private key {files.CA_KEY}: the server "
            "needs only ca.pem, server.pem and server.key; move it to a folder of its own "
            f"(`fedpriv certs ca` keeps it in {files.CA_KEY_DIR_NAME}/), offline if you can")
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


@dataclass(frozen=True)
class Partner:
    """An admitted partner: its authentication key and the ledger key it signs with."""

    name: str
    auth_key: Path
    ledger_key: str  # hex, as ledger entries name it


def admitted_partners(keys_dir: Path | None, extra: list[Path]) -> list[Partner]:
    """Every ``node-NAME.pub`` in ``keys_dir`` plus ``extra``, each with its ledger key.

    The ledger key is ``keys_dir/ledger-keys/NAME.pub`` (``fedpriv certs admit``), or for an
    ``--admit node-NAME.pub`` the ``node-NAME.ledger.pub`` the partner sent beside it.
    """
    found = ([keys_dir / f"node-{name}.pub" for name in files.node_names(keys_dir, (".pub",))]
             if keys_dir else [])
    partners = []
    for path in dict.fromkeys([*found, *extra]):
        verify.check_node_public_key(path)
        name = path.name.removeprefix("node-").removesuffix(".pub")
        candidates = [] if keys_dir is None else [files.admitted_ledger_key_path(keys_dir, name)]
        if path in extra:  # what the partner sent, as it sent it
            candidates.append(path.with_suffix(".ledger.pub"))
        ledger = next((c for c in candidates if c.is_file()), None)
        if ledger is None:
            raise files.CertError(f"no ledger key for {path}: admit the partner with "
                                  f"`fedpriv certs admit {name} node-{name}.pub "
                                  f"node-{name}.ledger.pub` (expected {candidates[0]})")
        partners.append(Partner(name, path, public_key_hex(
            node_keys.check_ledger_public_key(ledger))))
    return partners


def write_flwr_home(home: Path, address: str, tls: TlsFiles | None) -> Path:
    """A private ``$FLWR_HOME/config.toml`` whose default connection is this SuperLink."""
    private_dir(home)
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
    """The SuperLink, its SuperExec and its gateway, and the ``flwr`` commands that drive
    them; a context manager.

    With ``tls`` the SuperLink listens on 127.0.0.1:``local_port`` and HAProxy on
    ``host``:``port``; without (``--insecure``, tests only, loopback only) the SuperLink
    itself listens on ``host``:``port``.
    """

    def __init__(self, *, state_dir: Path, host: str, port: int, database: Path,
                 tls: TlsFiles | None, local_port: int = 0,
                 output: IO[str] | None = None) -> None:
        self.state_dir, self.host, self.port = state_dir, host, port
        self.database, self.tls = database, tls
        if tls is None:
            self.local_host, self.local_port = connect_host(host), port
        else:
            self.local_host, self.local_port = "127.0.0.1", local_port or free_local_port()
        self.address = f"{self.local_host}:{self.local_port}"
        self.secret = state_dir / "superexec.secret"
        self.home = write_flwr_home(state_dir / "flwr-home", self.address, tls)
        self.flwr = FlwrCli(self.home)
        self.output = output
        self.link: Service | None = None
        self.superexec: Service | None = None
        self.gateway = None if tls is None else Gateway(
            state_dir / "gateway", host, port, self.local_port, tls, output=output)

    def tls_flags(self, *, server: bool) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        if not server:
            return ["--root-certificates", str(self.tls.ca)]
        return ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                "--ssl-keyfile", str(self.tls.key), "--enable-supernode-auth"]

    def command(self) -> list[str]:
        """``flower-superlink``: loopback only, process isolation, claims need the secret."""
        return [executable("flower-superlink"), "--host", self.local_host,
                "--port", str(self.local_port), "--database", str(self.database),
                "--disable-runtime-dependency-installation", "--isolation", "process",
                "--superexec-auth-secret-file", str(self.secret),
                *self.tls_flags(server=True)]

    def superexec_command(self, parent: int) -> list[str]:
        """Flower's SuperExec for the ServerApp, holding the secret; it ends with `parent`."""
        return [executable("flower-superexec"), "--runtime-api-address", self.address,
                "--superexec-auth-secret-file", str(self.secret), "--parent-pid", str(parent),
                *self.tls_flags(server=False)]

    def __enter__(self) -> Coordinator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for host, port in {(connect_host(self.host), self.port),
                           (self.local_host, self.local_port)}:
            if unreachable(host, port, timeout=1) is None:
                raise LaunchError(f"port {port} on {host} is already in use (another "
                                  "SuperLink?); stop it or choose another --port/--local-port")
        private_dir(self.state_dir)
        ensure_secret(self.secret)
        self.database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = child_env(FLWR_HOME=str(self.home))
        self.link = Service("flower-superlink", self.command(), env, output=self.output,
                            log_path=self.state_dir / "superlink.log")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            wait_for_port(self.local_host, self.local_port, deadline, self.link)
            self.superexec = Service("flower-superexec", self.superexec_command(self.link.pid),
                                     env, output=self.output,
                                     log_path=self.state_dir / "superexec.log")
            if self.gateway is not None:
                self.gateway.start(deadline, connect_host(self.host))
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

    def check_alive(self) -> None:
        """LaunchError naming the first of our processes that stopped."""
        for name, service in (("the SuperLink", self.link), ("its SuperExec", self.superexec)):
            if service is not None and not service.alive():
                raise LaunchError(f"{name} exited with code {service.returncode}: "
                                  f"{service.last_error()}")
        if self.gateway is not None and not self.gateway.alive():
            raise LaunchError(f"the gateway (HAProxy) stopped: {self.gateway.last_error()}")

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for service in (self.superexec, self.link):
            if service is not None:
                service.stop()

    def register(self, partner: Partner) -> int:
        """Admit a partner's key; its node id (kept from an earlier start if registered)."""
        known = {node.name: node for node in read_admitted(self.admitted_file)}
        try:
            result = self.flwr.call("supernode", "register", str(partner.auth_key), CONNECTION)
        except LaunchError as err:
            if "already in use" not in str(err):
                raise
            if partner.name not in known:
                raise LaunchError(f"{partner.auth_key} is registered in {self.database}, but "
                                  f"its node id is not in {self.admitted_file}: start with a new "
                                  "--database") from None
            return known[partner.name].node_id
        return int(result["node-id"])

    @property
    def admitted_file(self) -> Path:
        return self.state_dir / "admitted-nodes.json"

    def admit(self, partners: list[Partner]) -> list[AdmittedNode]:
        """Register every partner; write which ledger key each node id signs with."""
        admitted = [AdmittedNode(p.name, self.register(p), p.ledger_key) for p in partners]
        write_admitted(self.admitted_file, admitted)
        return admitted

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

    def stop_unfinished_runs(self) -> list[int]:
        """Stop the runs an earlier start left unfinished in the database; their ids.

        Only one coordinator uses its database, so a run still marked as running was
        killed with it. Its last message can sit in the database without its content (the
        ServerApp died while sending it): a node that pulls it waits hours for content
        that never comes and answers nothing else, until the run is stopped.
        """
        stale = [int(run["run-id"]) for run in self.flwr.call("ls", CONNECTION)["runs"]
                 if not str(run["status"]).startswith("finished")]
        for run_id in stale:
            self.flwr.call("stop", str(run_id), CONNECTION, timeout=30)
        return stale

    def run_info(self, run_id: int) -> dict[str, Any]:
        return dict(self.flwr.call("ls", CONNECTION, "--run-id", str(run_id))["runs"][0])

    def follow(self, run_id: int, timeout: float | None) -> dict[str, Any]:
        """Stream the run's log to our output until it finishes; its final info from `flwr ls`.

        The log stream ends when the run is finished (``flwr log --stream``); if it breaks
        off earlier, the status is polled instead. Past ``timeout`` the run is stopped, and
        if the SuperLink, its SuperExec or the gateway stops, so does the command.
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
                self.check_alive()
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
    """The flags of ``fedpriv server``: where it listens, its TLS files, the run."""
    link = parser.add_argument_group("SuperLink")
    link.add_argument("--certs-dir", type=Path, default=files.DEFAULT_DIR,
                      help="folder with ca.pem, server.pem, server.key (`fedpriv certs ca/server`; "
                           f"default {files.DEFAULT_DIR}); it must not hold ca.key")
    link.add_argument("--keys-dir", type=Path, default=None,
                      help="folder whose node-*.pub keys (and ledger-keys/NAME.pub) are "
                           "admitted (default: --certs-dir, where `fedpriv certs admit` keeps "
                           "them)")
    link.add_argument("--admit", type=Path, action="append", default=[], metavar="FILE",
                      help="also admit this node-NAME.pub, with node-NAME.ledger.pub beside it "
                           "(repeatable)")
    link.add_argument("--host", default="127.0.0.1",
                      help="interface partners connect to (the gateway); 0.0.0.0 for partners "
                           "on other machines (default 127.0.0.1)")
    link.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help=f"port partners connect to: the Fleet API only (default {DEFAULT_PORT})")
    link.add_argument("--local-port", type=int, default=0,
                      help="the SuperLink's own port on 127.0.0.1, where this host's `flwr` "
                           "reaches the Control API (default: a free port, printed at start)")
    link.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                      help="the coordinator's own files (0700): Flower connection (flwr-home/), "
                           "logs, secret, gateway, run configs (default "
                           f"{DEFAULT_STATE_DIR})")
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
                      help="plain-text HTTP without TLS, node authentication or gateway, on a "
                           "loopback --host only (tests only)")
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


def _check_flags(args: argparse.Namespace) -> None:
    require(0 < args.port < 65536, "--port", args.port, "must be 1-65535")
    require(0 <= args.local_port < 65536, "--local-port", args.local_port,
            "must be 1-65535 (0 = a free port)")
    require(args.local_port != args.port, "--local-port", args.local_port,
            "must differ from --port (the gateway listens there)")
    require(args.timeout >= 0, "--timeout", args.timeout, "must be >= 0 (0 = no limit)")
    if args.insecure and args.admit:
        raise ConfigError("--insecure cannot be combined with --admit: Flower's SuperNode "
                          "authentication needs TLS; drop --insecure")
    if args.insecure and args.host not in LOOPBACK:
        raise ConfigError(f"--insecure cannot listen on {args.host}: without TLS and the "
                          "gateway, anyone who reaches it could run, read and stop federations "
                          "and register nodes; use a loopback --host, or drop --insecure")


def run_server_command(args: argparse.Namespace) -> int:
    """``fedpriv server``: check everything, start the SuperLink and its gateway, run, stop."""
    _check_flags(args)
    private_umask()
    cfg = _run_config(args)
    state_dir = args.state_dir.expanduser().resolve()
    tls = None if args.insecure else check_tls_files(args.certs_dir, connect_host(args.host))
    partners = ([] if args.insecure
                else admitted_partners(args.keys_dir or args.certs_dir, args.admit))
    if not args.insecure and not partners:
        raise ConfigError(f"no node public keys to admit in {args.keys_dir or args.certs_dir}: "
                          "add partners with `fedpriv certs admit NAME FILE LEDGER_FILE` or "
                          "--admit FILE")
    files_of_app = app_files(find_app_dir(args.app_dir))
    check_run_dir(cfg)
    if args.insecure:
        warn_insecure("the SuperLink accepts any node")
    database = (args.database or state_dir / "superlink.db").expanduser().resolve()
    with sigterm_as_interrupt(), Coordinator(state_dir=state_dir, host=args.host,
                                             port=args.port, database=database, tls=tls,
                                             local_port=args.local_port) as link:
        _announce(link, tls, state_dir, database)
        if partners:
            for node in link.admit(partners):
                partner = next(p for p in partners if p.name == node.name)
                fingerprint = node_keys.ssh_fingerprint(
                    verify.check_node_public_key(partner.auth_key))
                print(f"fedpriv: admitted {partner.auth_key} ({fingerprint}): node id "
                      f"{node.node_id}, ledger key {node.ledger_key[:16]}...", flush=True)
            cfg = cfg.replace(**{"ledger-keys": str(link.admitted_file)})
        for run_id in link.stop_unfinished_runs():
            print(f"fedpriv: stopped run {run_id}, left unfinished by an earlier start",
                  flush=True)
        app = stage(files_of_app, state_dir / "app")
        print(f"fedpriv: app sha256 {fab_hash(files_of_app)} (partners run it only if they "
              "approved this hash)", flush=True)
        run_id = link.start_run(app, cfg)
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
            while True:
                link.check_alive()
                time.sleep(2)
    return 0


def _announce(link: Coordinator, tls: TlsFiles | None, state_dir: Path, database: Path) -> None:
    if tls is None:
        print(f"fedpriv: SuperLink on {link.address} (http, INSECURE); log "
              f"{state_dir / 'superlink.log'}; database {database}", flush=True)
        return
    print(f"fedpriv: partners connect to {link.host}:{link.port} (TLS; the Fleet API only); "
          f"the SuperLink's Control API answers on {link.address} on this host only "
          f"(FLWR_HOME={link.home}); log {state_dir / 'superlink.log'}; database {database}",
          flush=True)


def _report(run_id: int, info: dict[str, Any]) -> None:
    traffic = info.get("network-traffic", {})
    print(f"fedpriv: run {run_id} {info['status']} after {float(info['elapsed']):.1f} s; "
          f"network traffic in {traffic.get('inbound-bytes', 0):,} B, out "
          f"{traffic.get('outbound-bytes', 0):,} B", flush=True)
