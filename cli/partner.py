"""`fedpriv client`: a partner's node, checked before it connects.

Everything a partner can get wrong is checked first and reported in one line: the root
certificate, node key and ledger key files, the data file (loaded as the ClientApp will
load it), the budget, whether the coordinator answers, and whether its TLS certificate
verifies against the partner's ``ca.pem`` for the address dialled.

Then two things run until the SuperNode exits (Ctrl-C and SIGTERM stop both):

* ``flower-supernode`` with ``--isolation process`` and a SuperExec secret (0600 in the
  state dir): it talks to the coordinator and queues each message as a task, but runs no
  app code, and only a holder of the secret can claim its tasks;
* this process, as the node's executor (``client.executor``): it claims the tasks and
  answers them with the ClientApp installed here, for runs of approved apps only (by
  default the FAB of this very installation; more with ``--approve-app HASH``). Nothing
  from a run's FAB is installed or imported on this machine.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import socket
import ssl
import sys
from pathlib import Path

from certs import verify
from cli.app_package import app_files, fab_hash, find_app_dir
from cli.processes import (
    LaunchError,
    Service,
    child_env,
    executable,
    flower_exit,
    key_values,
    parse_address,
    private_umask,
    sigterm_as_interrupt,
    warn_insecure,
)
from common.errors import ConfigError, LedgerError, require
from common.files import blocking_file, ensure_secret, private_dir
from common.net import unreachable

DEFAULT_STATE_DIR = Path("~/.fedpriv/node")
DEFAULT_LOCAL_PORT = 9094
CONNECT_TIMEOUT = 5.0
SECRET_FILE = "superexec.secret"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _refusal_hint(reason: str) -> str:
    """What a partner should do about Flower's reason for stopping the SuperNode."""
    if "activate" in reason:
        return ("the coordinator has not registered this node's public key: send them "
                "node-NAME.pub and ask them to admit it")
    if any(sign in reason for sign in ("disconnected", "without sending", "reset by peer")):
        return "is the coordinator running with TLS? an --insecure node cannot talk to it"
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return "the coordinator's certificate does not verify against --root-cert"
    return "see the SuperNode log above"


class CoordinatorError(ConfigError):
    """The coordinator cannot be reached, or its certificate does not verify."""


def check_reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
    """A TCP connection to the coordinator succeeds, or a one-line error says why not."""
    reason = unreachable(host, port, timeout)
    if reason is not None:
        raise CoordinatorError(f"cannot reach coordinator {host}:{port}: {reason}")


def check_tls(host: str, port: int, root_cert: Path, timeout: float = CONNECT_TIMEOUT) -> None:
    """The coordinator's certificate verifies against ``root_cert`` for ``host``.

    The same checks the SuperNode's TLS client makes (chain, validity, host name), done
    here so a wrong ca.pem, a certificate for another name or an expired one is one line
    instead of a retry loop.
    """
    context = ssl.create_default_context(cafile=str(root_cert))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as err:
        message = err.verify_message or str(err)
        if err.verify_code == 10:
            hint = "the coordinator must renew its server certificate"
        elif err.verify_code in (2, 18, 19, 20, 21):
            hint = (f"it is not signed by the CA in {root_cert}; get the coordinator's "
                    "current ca.pem")
        elif "mismatch" in message.lower():
            hint = "dial a name listed in the certificate, or ask the coordinator to add this one"
        else:
            hint = "check --root-cert and --coordinator"
        raise CoordinatorError(f"coordinator {host}:{port} TLS certificate rejected: "
                               f"{message}; {hint}") from None
    except ssl.SSLError as err:
        raise CoordinatorError(f"TLS handshake with coordinator {host}:{port} failed: "
                               f"{err.reason or err}; is it running with TLS?") from None
    except TimeoutError:
        raise CoordinatorError(f"TLS handshake with coordinator {host}:{port} timed out; is it "
                               "running with TLS?") from None
    except OSError as err:
        raise CoordinatorError(f"cannot reach coordinator {host}:{port}: "
                               f"{err.strerror or err}") from None


def check_local_port(port: int) -> None:
    """The SuperNode's own local port is free (two nodes on one machine need two ports)."""
    require(0 < port < 65536, "--port", port, "must be 1-65535")
    with socket.socket() as probe:
        # As uvicorn does: a port still in TIME_WAIT from an earlier node is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"local --port {port} is in use (another SuperNode?); choose "
                              "another --port") from None


def check_budget_flags(max_epsilon: float, delta: float | None) -> None:
    require(math.isfinite(max_epsilon) and max_epsilon > 0, "--max-epsilon", max_epsilon,
            "must be a finite number > 0")
    require(delta is None or 0 < delta < 1, "--delta", delta,
            "must be between 0 and 1 (exclusive)")


def check_max_wait_time(seconds: float | None) -> None:
    require(seconds is None or (math.isfinite(seconds) and seconds > 0), "--max-wait-time",
            seconds, "must be a finite number of seconds > 0 (leave it out to keep retrying)")


def check_state_dir(state_dir: Path) -> Path:
    """The node's state folder, resolved; refused before connecting if it cannot be one."""
    resolved = state_dir.expanduser().resolve()
    if (blocker := blocking_file(resolved)) is not None:
        raise ConfigError(f"invalid --state-dir {state_dir}: {blocker} is a file, not a folder")
    return resolved


def check_data(args: argparse.Namespace) -> str:
    """Load the data file as the ClientApp will; returns a one-line summary."""
    from common.config import DataConfig
    from common.data import load_labelled_texts

    cfg = DataConfig(data_path=str(args.data), text_column=args.text_column,
                     label_column=args.label_column, encoding=args.encoding)
    data = load_labelled_texts(cfg)
    return f"{len(data)} rows, labels {', '.join(data.label_names)}"


def ledger_key_path(args: argparse.Namespace) -> Path | None:
    """The node's ledger signing key: --ledger-key, else the one beside --node-key.

    None with --insecure and no --ledger-key: the node keeps one in its state dir.
    """
    if args.ledger_key is not None:
        return args.ledger_key
    if args.node_key is None:
        return None
    return args.node_key.with_name(args.node_key.name.removesuffix(".key") + ".ledger.key")


def check_ledger_key(path: Path | None) -> None:
    from common.ledger.keys import load_private_key

    if path is None:
        return
    try:
        load_private_key(path)
    except LedgerError as exc:
        raise ConfigError(f"--ledger-key: {exc} (`fedpriv certs node NAME` makes it beside "
                          "the node key)") from None


def approved_apps(extra: list[str], app_dir: Path | None) -> dict[str, str]:
    """sha256 -> where it comes from: this installation's app, and each --approve-app."""
    approved: dict[str, str] = {}
    try:
        approved[fab_hash(app_files(find_app_dir(app_dir)))] = "this installation"
    except ConfigError:
        if app_dir is not None:
            raise
    for value in extra:
        digest = value.strip().lower()
        require(bool(_SHA256.fullmatch(digest)), "--approve-app", value,
                "must be an app's sha256, 64 hex digits (the coordinator's `fedpriv server` "
                "prints it; `flwr ls` shows it as fab-hash)")
        approved.setdefault(digest, "--approve-app")
    if not approved:
        raise ConfigError("no app is approved on this node: run it from a fedpriv checkout, "
                          "or pass --approve-app HASH (or --app-dir)")
    return approved


def node_config(args: argparse.Namespace, state_dir: Path) -> dict[str, str | float]:
    """What the ClientApp reads from ``context.node_config``: the node's own settings."""
    from client.node import (  # imports flwr: late
        DELTA_KEY,
        LEDGER_KEY_KEY,
        MAX_EPSILON_KEY,
        STATE_DIR_KEY,
    )

    config: dict[str, str | float] = {
        "data-path": str(args.data.resolve()), "text-column": args.text_column,
        "label-column": args.label_column, "encoding": args.encoding,
        MAX_EPSILON_KEY: float(args.max_epsilon), STATE_DIR_KEY: str(state_dir)}
    if args.delta is not None:
        config[DELTA_KEY] = float(args.delta)
    if (ledger_key := ledger_key_path(args)) is not None:
        config[LEDGER_KEY_KEY] = str(ledger_key.resolve())
    return config


def supernode_command(args: argparse.Namespace, config: dict[str, str | float],
                      secret: Path) -> list[str]:
    """``flower-supernode`` in process isolation: it runs no app code, and only a process
    holding `secret` can claim its tasks."""
    command = [executable("flower-supernode"), "--superlink", args.coordinator,
               "--node-config", key_values(config), "--port", str(args.port),
               "--isolation", "process", "--superexec-auth-secret-file", str(secret)]
    if args.insecure:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(args.root_cert.resolve())]
        command += ["--auth-supernode-private-key", str(args.node_key.resolve())]
    if args.max_wait_time is not None:
        command += ["--max-wait-time", str(args.max_wait_time)]
    return command


# --------------------------------------------------------------------------- command line


def add_client_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``fedpriv client``."""
    parser.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                        help="the coordinator's SuperLink, a name in its certificate")
    parser.add_argument("--root-cert", type=Path, metavar="CA.PEM",
                        help="the ca.pem the coordinator sent (required unless --insecure)")
    parser.add_argument("--node-key", type=Path, metavar="NODE-NAME.KEY",
                        help="this node's private key from `fedpriv certs node NAME` "
                             "(required unless --insecure)")
    parser.add_argument("--data", type=Path, required=True, metavar="FILE",
                        help="this node's CSV or JSONL file; it never leaves this machine")
    parser.add_argument("--text-column", default="text", help="(default: text)")
    parser.add_argument("--label-column", default="label", help="(default: label)")
    parser.add_argument("--encoding", default="utf-8", help="(default: utf-8)")
    parser.add_argument("--max-epsilon", type=float, required=True,
                        help="the largest total epsilon this node accepts; it refuses rounds "
                             "beyond it, whatever the coordinator asks")
    parser.add_argument("--delta", type=float, default=None,
                        help="the largest delta this node accepts (default: the run's)")
    parser.add_argument("--ledger-key", type=Path, default=None, metavar="NODE-NAME.LEDGER.KEY",
                        help="the key this node signs its privacy records with (default: "
                             "node-NAME.ledger.key beside --node-key)")
    parser.add_argument("--approve-app", action="append", default=[], metavar="SHA256",
                        help="also take part in runs of the app with this sha256, after "
                             "reviewing it (default: only this installation's own app; "
                             "repeatable)")
    parser.add_argument("--app-dir", type=Path, default=None,
                        help="the fedpriv checkout whose app this node approves by default "
                             "(default: this installation)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="this node's ledger, privacy spend and secret, kept across runs "
                             f"(0700; default {DEFAULT_STATE_DIR})")
    parser.add_argument("--port", type=int, default=DEFAULT_LOCAL_PORT,
                        help="the SuperNode's local port; nodes on one machine need different "
                             f"ports (default {DEFAULT_LOCAL_PORT})")
    parser.add_argument("--max-wait-time", type=float, default=None, metavar="SECONDS",
                        help="give up if the coordinator stays unreachable this long "
                             "(default: keep retrying)")
    parser.add_argument("--insecure", action="store_true",
                        help="plain-text HTTP, no TLS and no node authentication (tests only)")
    return parser


def _check_files(args: argparse.Namespace) -> None:
    if args.insecure:
        if args.node_key is not None:
            raise ConfigError("--insecure cannot be combined with --node-key: Flower's node "
                              "authentication needs TLS; drop --insecure")
        return
    for flag, value in (("--root-cert", args.root_cert), ("--node-key", args.node_key)):
        if value is None:
            raise ConfigError(f"{flag} is required (or --insecure, for tests only)")
    verify.check_certificate(args.root_cert)
    verify.check_node_key(args.node_key)


def run_client_command(args: argparse.Namespace) -> int:
    """``fedpriv client``: check everything, then run the SuperNode and this node's executor
    until the SuperNode exits."""
    host, port = parse_address(args.coordinator, "--coordinator")
    _check_files(args)
    check_ledger_key(ledger_key_path(args))
    check_budget_flags(args.max_epsilon, args.delta)
    check_max_wait_time(args.max_wait_time)
    state_dir = check_state_dir(args.state_dir)
    check_local_port(args.port)
    approved = approved_apps(args.approve_app, args.app_dir)
    print(f"fedpriv: data {args.data}: {check_data(args)}", flush=True)
    check_reachable(host, port)
    if args.insecure:
        warn_insecure("this node talks to the coordinator")
    else:
        check_tls(host, port, args.root_cert)
    private_umask()
    try:
        private_dir(state_dir)
    except OSError as err:
        raise ConfigError(f"invalid --state-dir {args.state_dir}: cannot create it "
                          f"({err.strerror or err})") from None
    secret = state_dir / SECRET_FILE
    ensure_secret(secret)
    from client.app import app as client_app  # torch and transformers: seconds to import
    from client.executor import ApprovedApps, serve

    command = supernode_command(args, node_config(args, state_dir), secret)
    print(f"fedpriv: starting SuperNode for {args.coordinator} (max epsilon "
          f"{args.max_epsilon:g}); state {state_dir}", flush=True)
    for digest, origin in approved.items():
        print(f"fedpriv: approved app sha256 {digest} ({origin})", flush=True)
    _log_to_stdout()
    # Flower keeps its own files under FLWR_HOME: keep them with the node's state.
    env = child_env(FLWR_HOME=str(state_dir / "flwr-home"))
    with sigterm_as_interrupt():
        node = Service("flower-supernode", command, env, output=sys.stdout)
        try:
            serve(f"127.0.0.1:{args.port}", secret.read_bytes(),
                  ApprovedApps(frozenset(approved)), client_app, keep_going=node.alive)
            code = node.wait()
        finally:
            node.stop(grace=15)
    if code != 0:
        reported = flower_exit(node.tail)
        reason = reported[1] if reported else node.last_error()
        raise LaunchError(f"flower-supernode stopped: {reason} ({_refusal_hint(reason)})")
    return 0


def _log_to_stdout() -> None:
    """The executor's and the ClientApp's log lines, beside the SuperNode's."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    fedpriv = logging.getLogger("fedpriv")
    fedpriv.addHandler(handler)
    fedpriv.setLevel(logging.INFO)
    fedpriv.propagate = False  # Flower's own handlers would print each line again
    logging.getLogger("httpx").setLevel(logging.WARNING)
