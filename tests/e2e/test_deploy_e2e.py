"""`fedpriv server` / `fedpriv client`: a real SuperLink and SuperNodes over TLS.

The e2e tests start real Flower processes on 127.0.0.1 (and, where the machine allows,
in network namespaces of their own) and assert on outcomes: the run completes, the
model changes, every node's spend is in the ledger within its own budget, and the
wrong certificate, an unregistered key, a plain-text node and an expired certificate
are refused. The one-line errors that need no Flower are in
tests/unit/test_cli_errors_deploy.py.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import pytest

from certs import issue
from cli.coordinator import Coordinator, TlsFiles, admitted_partners, check_tls_files
from cli.processes import executable
from common.files import ensure_secret, private_dir
from tests.helpers.data import write_partner_csvs
from tests.helpers.deploy import (
    FEDPRIV,
    TINY_RUN,
    assert_model_changed,
    assert_own_ledgers_match,
    client_args,
    node_ids,
    server_args,
    server_records,
    wait_for_control_api,
)
from tests.helpers.netns import lan, netns_unavailable
from tests.helpers.pki import expired, make_pki
from tests.helpers.processes import Proc, free_port, listening, processes, start, wait_until

pytestmark = pytest.mark.e2e


def test_tls_deployment_with_node_auth_trains_and_accounts(tmp_path):
    pki = make_pki(tmp_path / "certs", ["alice", "bob"])
    data = write_partner_csvs(tmp_path, ["alice", "bob"])
    budgets = {"alice": 3.0, "bob": 5.0}
    port, run_dir, home = free_port(), tmp_path / "run", tmp_path / "home"
    home.mkdir()
    with processes() as started:
        began = time.monotonic()
        server = start(started, server_args(pki, port, tmp_path / "coord", *TINY_RUN,
                                            "--num-rounds", "2", "--run-dir", str(run_dir),
                                            timeout=360), tmp_path / "server.log", HOME=str(home))
        server.wait_for(r"started run \d+", 120)
        for name in budgets:
            start(started, client_args(f"127.0.0.1:{port}", pki, name, data[name], budgets[name],
                                       tmp_path / f"node-{name}", free_port()),
                  tmp_path / f"client-{name}.log", HOME=str(home))
        code = server.wait(420)
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
        per_node[rec.node_id].append(rec)
    assert set(per_node) == set(ids.values())
    for name, node_id in ids.items():
        *records, attested = per_node[node_id]  # the run ends with each node's attestation
        assert [r.kind for r in records] == ["train", "train"]
        assert (attested.kind, attested.epsilon) == ("attestation", records[-1].epsilon)
        assert [r.round for r in records] == [1, 2]
        assert all(r.epsilon_budget == budgets[name] for r in records)
        assert 0 < records[0].epsilon <= records[1].epsilon <= budgets[name]
    # Each node's own signed ledger (STATE_DIR/ledger.jsonl, written by the ClientApp) holds
    # exactly the entries the server recorded for it: same records, same signatures.
    assert_own_ledgers_match(run_dir, tmp_path, ids)


def tls_superlink(started: list[Proc], tmp_path: Path, tls: TlsFiles, port: int) -> Coordinator:
    """Flower's own SuperLink with `tls`, started with Coordinator's command line, without
    the gateway: nodes dial it on 127.0.0.1:`port` directly."""
    link = Coordinator(state_dir=tmp_path / "coord", host="127.0.0.1", port=free_port(),
                       database=tmp_path / "coord" / "superlink.db", tls=tls, local_port=port)
    ensure_secret(private_dir(link.state_dir) / link.secret.name)
    start(started, link.command(), tmp_path / "superlink.log", FLWR_HOME=str(link.home))
    return link


def raw_supernode(started: list[Proc], coordinator: str, root_cert: Path, node_key: Path,
                  log: Path) -> Proc:
    """`flower-supernode` itself, as for anyone who skips `fedpriv client`."""
    return start(started, [executable("flower-supernode"), "--superlink", coordinator,
                           "--root-certificates", str(root_cert),
                           "--auth-supernode-private-key", str(node_key),
                           "--port", str(free_port()), "--max-retries", "0"],
                 log, FLWR_HOME=str(log.with_suffix(".home")))


def test_wrong_ca_unregistered_key_and_plain_text_nodes_are_refused(tmp_path):
    pki = make_pki(tmp_path / "certs", ["alice", "mallory"])
    other_ca = tmp_path / "other"
    issue.create_ca(other_ca)
    data = write_partner_csvs(tmp_path, ["alice"])["alice"]
    port = free_port()
    coordinator = f"127.0.0.1:{port}"
    with processes() as started:
        link = tls_superlink(started, tmp_path, check_tls_files(pki, "127.0.0.1"), port)
        wait_for_control_api(link)
        alice = [p for p in admitted_partners(pki, []) if p.name == "alice"]
        first = link.admit(alice)
        assert link.admit(alice) == first  # registered once; the same node id again

        def client(name: str, log: str, root: Path = pki) -> Proc:
            args = client_args(coordinator, pki, name, data, 3.0, tmp_path / log, free_port())
            args[args.index("--root-cert") + 1] = str(root / "ca.pem")
            return start(started, args, tmp_path / f"{log}.log")

        # A root certificate from another CA: refused before Flower starts...
        wrong_ca = client("alice", "wrong-ca", root=other_ca)
        # ...and by the SuperNode itself, for anyone who skips `fedpriv client`.
        raw = raw_supernode(started, coordinator, other_ca / "ca.pem", pki / "node-alice.key",
                            tmp_path / "raw-wrong-ca.log")
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
        # Flower's words vary with timing ("Server disconnected without sending a
        # response", "Connection reset by peer"); the hint names the cause either way.
        assert "is the coordinator running with TLS? an --insecure node cannot talk to it" \
            in plain.text()
        # Nobody got in: the one registered node never came online.
        assert [n["status"] for n in link.nodes()] == ["registered"]
    # ...and nothing of theirs was recorded: no node kept a ledger entry.
    for state in ("wrong-ca", "stranger", "plain"):
        assert not (tmp_path / state / "ledger.jsonl").exists()


def test_node_refuses_an_expired_server_certificate(tmp_path):
    pki = make_pki(tmp_path / "certs", ["alice"], **expired())
    data = write_partner_csvs(tmp_path, ["alice"])["alice"]
    port = free_port()
    with processes() as started:
        # `fedpriv server` itself refuses the expired certificate (see the unit test), so the
        # SuperLink is started with Flower's own command line.
        tls_superlink(started, tmp_path,
                      TlsFiles(pki / "ca.pem", pki / "server.pem", pki / "server.key"), port)
        wait_until(lambda: listening("127.0.0.1", port), 60, "the SuperLink to listen",
                   *started)
        node = start(started, client_args(f"127.0.0.1:{port}", pki, "alice", data, 3.0,
                                          tmp_path / "node", free_port()),
                     tmp_path / "client.log")
        raw = raw_supernode(started, f"127.0.0.1:{port}", pki / "ca.pem",
                            pki / "node-alice.key", tmp_path / "raw.log")
        assert node.wait(60) == 2
        assert "TLS certificate rejected: certificate has expired" in node.text()
        assert raw.wait(60) != 0
        assert "certificate has expired" in raw.text()


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
            server = start(started, ["ip", "netns", "exec", coord_ns, *server_args(
                pki, port, tmp_path / "coord", "--host", coord_ip, *TINY_RUN, "--num-rounds",
                "1", "--no-central-eval", "--run-dir", str(run_dir), timeout=300)],
                tmp_path / "server.log")
            server.wait_for(r"started run \d+", 120)
            for name, budget in budgets.items():
                ns, _ = hosts[name]
                # The node's host has no route to the coordinator's loopback: only the LAN.
                start(started, ["ip", "netns", "exec", ns,
                                *client_args(f"{coord_ip}:{port}", pki, name, data[name], budget,
                                             tmp_path / f"node-{name}", 9094)],
                      tmp_path / f"client-{name}.log")
            code = server.wait(360)
            assert code == 0, server.tail()
        ids = node_ids(server.text())
        records = [r for r in server_records(run_dir) if r.kind != "attestation"]
        assert {r.node_id for r in records} == set(ids.values()) and len(records) == 2
        assert len(server_records(run_dir)) == 4  # and one attestation of each node
        for rec in records:
            name = next(n for n, i in ids.items() if i == rec.node_id)
            assert rec.kind == "train" and 0 < rec.epsilon <= rec.epsilon_budget == budgets[name]
        assert_model_changed(run_dir, 1)
