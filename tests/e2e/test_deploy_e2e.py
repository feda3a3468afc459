"""`fedpriv server` / `fedpriv client`: a real SuperLink and SuperNodes over TLS.

The e2e tests start real Flower processes on 127.0.0.1 (and, where the machine allows,
in network namespaces of their own) and assert on outcomes: the run completes, the
model changes, every node's spend is in the ledger within its own budget, and the
wrong certificate, an unregistered key, a plain-text node and an expired certificate
are refused. The unmarked tests check the one-line errors without starting Flower.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from certs import tool
from cli.coordinator import Coordinator, TlsFiles, check_tls_files
from cli.main import main
from cli.processes import child_env, executable, key_values
from common.config import RunConfig
from common.data import EMBEDDED_LABELS, load_labelled_texts, subsample
from common.ledger.record import PrivacyRecord

FEDPRIV = [sys.executable, "-m", "cli.main"]
TINY_RUN = ["--model", "tiny", "--max-length", "32", "--batch-size", "16", "--local-steps", "2",
            "--max-examples", "400"]


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
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


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.kill()


def start(started: list[Proc], args: list[str], log: Path, **env: str) -> Proc:
    proc = Proc(args, log, child_env(**env))
    started.append(proc)
    return proc


def write_partner_csvs(folder: Path, names: list[str], rows_each: int = 200) -> dict[str, Path]:
    """Disjoint files of real labelled tweets from the embedded set, one per partner."""
    data = subsample(load_labelled_texts(RunConfig().data), rows_each * len(names), seed=3)
    rows = [(t, data.label_names[y]) for t, y in zip(data.texts, data.labels, strict=True)]
    random.Random(5).shuffle(rows)
    files = {}
    for i, name in enumerate(names):
        files[name] = folder / f"{name}.csv"
        with open(files[name], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(("text", "label"))
            writer.writerows(rows[i * rows_each:(i + 1) * rows_each])
    return files


def make_pki(folder: Path, nodes: list[str], ips: tuple[str, ...] = ("127.0.0.1",)) -> Path:
    tool.create_ca(folder)
    tool.issue_server_cert(folder, ip_addresses=ips)
    for name in nodes:
        tool.create_node_auth_key(folder, name)
    return folder


def client_args(coordinator: str, pki: Path, name: str, data: Path, max_epsilon: float,
                state: Path, port: int, *extra: str) -> list[str]:
    return [*FEDPRIV, "client", "--coordinator", coordinator, "--root-cert", str(pki / "ca.pem"),
            "--node-key", str(pki / f"node-{name}.key"), "--data", str(data),
            "--max-epsilon", str(max_epsilon), "--state-dir", str(state), "--port", str(port),
            "--max-wait-time", "60", *extra]


def node_ids(server_output: str) -> dict[str, int]:
    """Node name -> node id, from the server's 'admitted node-NAME.pub (...): node id N'."""
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"node-([\w.-]+)\.pub \([^)]*\): node id (\d+)", server_output)}


def ledger_lines(path: Path) -> list[dict]:
    """The JSON lines of a ledger: the server's combined one or a node's own."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def server_records(run_dir: Path) -> list[PrivacyRecord]:
    return [PrivacyRecord(**line["record"]) for line in ledger_lines(run_dir / "ledger.jsonl")]


def signed_part(line: dict) -> dict:
    """What the node wrote (and signed): the server's receipt fields left out."""
    return {k: v for k, v in line.items() if k not in ("received_from", "received_at")}


def initial_trainable_state() -> dict[str, np.ndarray]:
    from common.model import build_model, trainable_state

    cfg = RunConfig().replace(model="tiny", labels=",".join(EMBEDDED_LABELS))
    return trainable_state(build_model(cfg.model, cfg.data.label_names, cfg.train.seed))


def assert_model_changed(run_dir: Path, server_round: int) -> None:
    from server.checkpoint import checkpoint_path, load_checkpoint

    initial = initial_trainable_state()
    final = load_checkpoint(checkpoint_path(run_dir, server_round))
    assert set(final) == set(initial)
    assert max(np.abs(final[k] - initial[k]).max() for k in final) > 1e-4


def wait_for_control_api(link: Coordinator, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            link.nodes()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# --------------------------------------------------------------------------- e2e: TLS run


@pytest.mark.e2e
def test_tls_deployment_with_node_auth_trains_and_accounts(tmp_path):
    pki = make_pki(tmp_path / "certs", ["alice", "bob"])
    data = write_partner_csvs(tmp_path, ["alice", "bob"])
    budgets = {"alice": 3.0, "bob": 5.0}
    port, run_dir, home = free_port(), tmp_path / "run", tmp_path / "home"
    home.mkdir()
    with processes() as started:
        began = time.monotonic()
        server = start(started, [*FEDPRIV, "server", "--certs-dir", str(pki), "--port", str(port),
                                 "--state-dir", str(tmp_path / "coord"), *TINY_RUN,
                                 "--num-rounds", "2", "--run-dir", str(run_dir),
                                 "--timeout", "240"], tmp_path / "server.log", HOME=str(home))
        server.wait_for(r"started run \d+", 120)
        for name in budgets:
            start(started, client_args(f"127.0.0.1:{port}", pki, name, data[name], budgets[name],
                                       tmp_path / f"node-{name}", free_port()),
                  tmp_path / f"client-{name}.log", HOME=str(home))
        code = server.wait(300)
        elapsed = time.monotonic() - began
        output = server.text()
        assert code == 0, server.tail()
    print(f"\nTLS deployment, 2 rounds, 2 nodes: {elapsed:.1f} s wall")
    assert re.search(r"run \d+ finished:completed", output)
    assert not (home / ".flwr").exists()  # the user's Flower config is untouched

    assert_model_changed(run_dir, 2)

    ids = node_ids(output)
    assert set(ids) == set(budgets)
    per_node = defaultdict(list)
    for rec in server_records(run_dir):
        assert rec.kind == "train"
        per_node[rec.node_id].append(rec)
    assert set(per_node) == set(ids.values())
    for name, node_id in ids.items():
        records = per_node[node_id]
        assert [r.round for r in records] == [1, 2]
        assert all(r.epsilon_budget == budgets[name] for r in records)
        assert 0 < records[0].epsilon <= records[1].epsilon <= budgets[name]

    # Each node's own signed ledger (STATE_DIR/ledger.jsonl, written by the ClientApp) holds
    # exactly the entries the server recorded for it: same records, same signatures.
    server_lines = ledger_lines(run_dir / "ledger.jsonl")
    for name, node_id in ids.items():
        own = ledger_lines(tmp_path / f"node-{name}" / "ledger.jsonl")
        assert [signed_part(line) for line in own] == [
            signed_part(line) for line in server_lines if line["record"]["node_id"] == node_id]


# --------------------------------------------------------------------------- e2e: refusals


@pytest.mark.e2e
def test_wrong_ca_unregistered_key_and_plain_text_nodes_are_refused(tmp_path):
    pki = make_pki(tmp_path / "certs", ["alice", "mallory"])
    other_ca = tmp_path / "other"
    tool.create_ca(other_ca)
    data = write_partner_csvs(tmp_path, ["alice"])["alice"]
    port = free_port()
    coordinator = f"127.0.0.1:{port}"
    link = Coordinator(state_dir=tmp_path / "coord", host="127.0.0.1", port=port,
                       database=tmp_path / "coord" / "superlink.db",
                       tls=check_tls_files(pki, "127.0.0.1"))
    with processes() as started:
        start(started, link.command(), tmp_path / "superlink.log", FLWR_HOME=str(link.home))
        wait_for_control_api(link)
        assert link.register(pki / "node-alice.pub").startswith("node id")
        assert link.register(pki / "node-alice.pub") == "already registered"

        def client(name: str, log: str, root: Path = pki) -> Proc:
            args = client_args(coordinator, pki, name, data, 3.0, tmp_path / log, free_port())
            args[args.index("--root-cert") + 1] = str(root / "ca.pem")
            return start(started, args, tmp_path / f"{log}.log")

        # A root certificate from another CA: refused before Flower starts...
        wrong_ca = client("alice", "wrong-ca", root=other_ca)
        # ...and by the SuperNode itself, for anyone who skips `fedpriv client`.
        raw = start(started, [executable("flower-supernode"), "--superlink", coordinator,
                              "--root-certificates", str(other_ca / "ca.pem"),
                              "--auth-supernode-private-key", str(pki / "node-alice.key"),
                              "--port", str(free_port()), "--max-retries", "0"],
                    tmp_path / "raw-wrong-ca.log", FLWR_HOME=str(tmp_path / "raw-home"))
        # A key the coordinator never registered.
        stranger = client("mallory", "stranger")
        # A plain-text node against the TLS SuperLink.
        plain = start(started, [*FEDPRIV, "client", "--insecure", "--coordinator", coordinator,
                                "--data", str(data), "--max-epsilon", "3", "--state-dir",
                                str(tmp_path / "plain"), "--port", str(free_port()),
                                "--max-wait-time", "3"], tmp_path / "plain.log")

        assert wrong_ca.wait(60) == 2
        assert "TLS certificate rejected: unable to get local issuer certificate" in \
            wrong_ca.text()
        assert raw.wait(60) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in raw.text()
        assert stranger.wait(90) == 2
        assert "Failed to activate SuperNode" in stranger.text()
        assert "has not registered this node's public key" in stranger.text()
        assert plain.wait(90) == 2
        assert "WARNING: --insecure" in plain.text()
        assert "Server disconnected without sending a response" in plain.text()
        # Nobody got in: the one registered node never came online.
        assert [n["status"] for n in link.nodes()] == ["registered"]


@pytest.mark.e2e
def test_node_refuses_an_expired_server_certificate(tmp_path):
    pki = tmp_path / "certs"
    tool.create_ca(pki)
    tool.issue_server_cert(pki, not_before=datetime.now(UTC) - timedelta(days=30), days=2)
    tool.create_node_auth_key(pki, "alice")
    data = write_partner_csvs(tmp_path, ["alice"])["alice"]
    port = free_port()
    # `fedpriv server` itself refuses the expired certificate (see the unit test), so the
    # SuperLink is started with Flower's own command line.
    link = Coordinator(state_dir=tmp_path / "coord", host="127.0.0.1", port=port,
                       database=tmp_path / "coord" / "superlink.db",
                       tls=TlsFiles(pki / "ca.pem", pki / "server.pem", pki / "server.key"))
    with processes() as started:
        start(started, link.command(), tmp_path / "superlink.log", FLWR_HOME=str(link.home))
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "SuperLink did not start"
            time.sleep(0.3)
        node = start(started, client_args(f"127.0.0.1:{port}", pki, "alice", data, 3.0,
                                          tmp_path / "node", free_port()),
                     tmp_path / "client.log")
        raw = start(started, [executable("flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                              "--root-certificates", str(pki / "ca.pem"),
                              "--auth-supernode-private-key", str(pki / "node-alice.key"),
                              "--port", str(free_port()), "--max-retries", "0"],
                    tmp_path / "raw.log", FLWR_HOME=str(tmp_path / "raw-home"))
        assert node.wait(60) == 2
        assert "TLS certificate rejected: certificate has expired" in node.text()
        assert raw.wait(60) != 0
        assert "certificate has expired" in raw.text()


# --------------------------------------------------------------------------- e2e: namespaces


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"fpprobe{os.getpid()}"
    added = _ip("netns", "add", probe)
    if added.returncode != 0:
        return f"`ip netns add` is not allowed here: {added.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@contextlib.contextmanager
def lan(hosts: list[str], subnet: str = "10.231.7") -> Iterator[dict[str, tuple[str, str]]]:
    """One namespace per host on a bridge in the first one: {host: (namespace, ip)}."""
    tag = uuid.uuid4().hex[:6]
    spaces = {host: (f"fp{tag}{i}", f"{subnet}.{i + 1}") for i, host in enumerate(hosts)}
    made: list[str] = []
    try:
        for ns, _ in spaces.values():
            assert _ip("netns", "add", ns).returncode == 0
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        hub, hub_ip = spaces[hosts[0]]
        steps = [("-n", hub, "link", "add", "br0", "type", "bridge"),
                 ("-n", hub, "addr", "add", f"{hub_ip}/24", "dev", "br0"),
                 ("-n", hub, "link", "set", "br0", "up")]
        for i, host in enumerate(hosts[1:], start=1):
            ns, ip = spaces[host]
            near, far = f"v{tag}{i}a", f"v{tag}{i}b"
            steps += [("link", "add", near, "netns", hub, "type", "veth", "peer", "name", far,
                       "netns", ns),
                      ("-n", hub, "link", "set", near, "master", "br0", "up"),
                      ("-n", ns, "addr", "add", f"{ip}/24", "dev", far),
                      ("-n", ns, "link", "set", far, "up")]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield spaces
    finally:
        for ns in made:
            _ip("netns", "del", ns)


@pytest.mark.e2e
def test_coordinator_and_nodes_on_separate_hosts(tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with lan(["coord", "alice", "bob"]) as hosts:
        coord_ns, coord_ip = hosts["coord"]
        pki = make_pki(tmp_path / "certs", ["alice", "bob"], ips=(coord_ip,))
        data = write_partner_csvs(tmp_path, ["alice", "bob"])
        budgets = {"alice": 3.0, "bob": 5.0}
        run_dir, port = tmp_path / "run", 9092
        with processes() as started:
            server = start(started, ["ip", "netns", "exec", coord_ns, *FEDPRIV, "server",
                                     "--certs-dir", str(pki), "--host", coord_ip, "--port",
                                     str(port), "--state-dir", str(tmp_path / "coord"),
                                     *TINY_RUN, "--num-rounds", "1", "--no-central-eval",
                                     "--run-dir", str(run_dir), "--timeout", "180"],
                           tmp_path / "server.log")
            server.wait_for(r"started run \d+", 120)
            for name, budget in budgets.items():
                ns, _ = hosts[name]
                # The node's host has no route to the coordinator's loopback: only the LAN.
                start(started, ["ip", "netns", "exec", ns,
                                *client_args(f"{coord_ip}:{port}", pki, name, data[name], budget,
                                             tmp_path / f"node-{name}", 9094)],
                      tmp_path / f"client-{name}.log")
            code = server.wait(240)
            assert code == 0, server.tail()
        ids = node_ids(server.text())
        records = server_records(run_dir)
        assert {r.node_id for r in records} == set(ids.values()) and len(records) == 2
        for rec in records:
            name = next(n for n, i in ids.items() if i == rec.node_id)
            assert rec.kind == "train" and 0 < rec.epsilon <= rec.epsilon_budget == budgets[name]
        assert_model_changed(run_dir, 1)


# --------------------------------------------------------------------------- fast: one-line errors


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), ["alice"])


@pytest.fixture(scope="module")
def partner_csv(tmp_path_factory) -> Path:
    return write_partner_csvs(tmp_path_factory.mktemp("data"), ["alice"])["alice"]


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedpriv: error: "), err
    return err[0]


def client_argv(pki: Path, data: Path, coordinator: str, *extra: str, **over: str) -> list[str]:
    flags = {"--coordinator": coordinator, "--root-cert": str(pki / "ca.pem"),
             "--node-key": str(pki / "node-alice.key"), "--data": str(data),
             "--max-epsilon": "3", "--port": str(free_port())}
    flags.update(over)
    return ["client", *[x for pair in flags.items() for x in pair], *extra]


def test_client_missing_root_cert(capsys, pki, partner_csv, tmp_path):
    line = one_line_error(capsys, client_argv(pki, partner_csv, "127.0.0.1:9",
                                              **{"--root-cert": str(tmp_path / "ca.pem")}))
    assert f"{tmp_path / 'ca.pem'} does not exist" in line


def test_client_node_key_in_wrong_format(capsys, pki, partner_csv):
    line = one_line_error(capsys, client_argv(pki, partner_csv, "127.0.0.1:9",
                                              **{"--node-key": str(pki / "server.key")}))
    assert "is not an OpenSSH private key" in line


def test_client_bad_data_is_refused_before_connecting(capsys, pki, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,positive\n,negative\n")
    line = one_line_error(capsys, client_argv(pki, bad, "127.0.0.1:9"))
    assert str(bad) in line and "cannot reach" not in line


def test_client_unreachable_coordinator(capsys, pki, partner_csv):
    port = free_port()  # nothing listens there
    line = one_line_error(capsys, client_argv(pki, partner_csv, f"127.0.0.1:{port}"))
    assert f"cannot reach coordinator 127.0.0.1:{port}: Connection refused" in line


def test_client_bad_address_and_budget(capsys, pki, partner_csv):
    assert "expected HOST:PORT" in one_line_error(capsys, client_argv(pki, partner_csv, "nohost"))
    line = one_line_error(capsys, client_argv(pki, partner_csv, "127.0.0.1:9",
                                              **{"--max-epsilon": "-1"}))
    assert "invalid --max-epsilon -1.0" in line


@contextlib.contextmanager
def tls_listener(folder: Path) -> Iterator[int]:
    """A bare TLS server with folder's server.pem/key: what a coordinator's handshake shows."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_client_refuses_a_certificate_for_another_host(capsys, partner_csv, tmp_path):
    tool.create_ca(tmp_path)
    tool.issue_server_cert(tmp_path, dns_names=["coord.example.org"], ip_addresses=[],
                           include_loopback=False)
    tool.create_node_auth_key(tmp_path, "alice")
    with tls_listener(tmp_path) as port:
        line = one_line_error(capsys, client_argv(tmp_path, partner_csv, f"127.0.0.1:{port}"))
    assert "IP address mismatch" in line and "dial a name listed in the certificate" in line


def test_client_refuses_a_certificate_from_another_ca(capsys, pki, partner_csv, tmp_path):
    tool.create_ca(tmp_path)
    with tls_listener(pki) as port:
        line = one_line_error(capsys, client_argv(pki, partner_csv, f"127.0.0.1:{port}",
                                                  **{"--root-cert": str(tmp_path / "ca.pem")}))
    assert "unable to get local issuer certificate" in line


def test_client_refuses_a_plain_server(capsys, pki, partner_csv):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def answer_in_plain_text() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_in_plain_text, daemon=True)
    thread.start()
    try:
        line = one_line_error(capsys, client_argv(pki, partner_csv, f"127.0.0.1:{port}"))
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert "TLS handshake with coordinator" in line and "running with TLS?" in line


def server_argv(certs: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["server", "--certs-dir", str(certs), "--state-dir", str(tmp_path / "coord"),
            "--port", str(free_port()), "--run-dir", str(tmp_path / "run"), *extra]


def test_server_missing_certificates(capsys, tmp_path):
    line = one_line_error(capsys, server_argv(tmp_path / "nowhere", tmp_path))
    assert "ca.pem not found" in line and "fedpriv certs" in line


def test_server_certificate_for_another_host(capsys, pki, tmp_path):
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--host", "10.1.2.3"))
    assert "is not valid for host '10.1.2.3'" in line


def test_server_expired_certificate(capsys, tmp_path):
    tool.create_ca(tmp_path)
    tool.issue_server_cert(tmp_path, not_before=datetime.now(UTC) - timedelta(days=30), days=2)
    tool.create_node_auth_key(tmp_path, "alice")
    assert "expired on" in one_line_error(capsys, server_argv(tmp_path, tmp_path))


def test_insecure_cannot_authenticate_nodes(capsys, pki, partner_csv, tmp_path):
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--insecure", "--admit",
                                              str(pki / "node-alice.pub")))
    assert "--insecure cannot be combined with --admit" in line
    line = one_line_error(capsys, client_argv(pki, partner_csv, "127.0.0.1:9", "--insecure"))
    assert "--insecure cannot be combined with --node-key" in line


def test_server_needs_node_keys(capsys, tmp_path):
    tool.create_ca(tmp_path)
    tool.issue_server_cert(tmp_path)
    assert "no node public keys to admit" in one_line_error(capsys, server_argv(tmp_path,
                                                                                tmp_path))


def test_server_refuses_a_private_key_as_node_key(capsys, pki, tmp_path):
    line = one_line_error(capsys, server_argv(pki, tmp_path, "--admit",
                                              str(pki / "node-alice.key")))
    assert "is not an OpenSSH public key" in line


def test_node_config_values_survive_flowers_parser(tmp_path):
    from flwr.common.config import parse_config_args

    config = {"data-path": str(tmp_path / "my data" / "o'brien.csv"), "text-column": "tweet text",
              "label-column": "label", "max-epsilon": 3.0, "delta": 1e-06, "state-dir": "C:\\n"}
    assert parse_config_args([key_values(config)]) == config
    with pytest.raises(Exception, match="both ' and"):
        key_values({"data-path": "it's a \"file\""})
