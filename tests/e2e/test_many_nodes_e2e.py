"""Ten partners at once: `fedpriv server` and ten `fedpriv client` processes on 127.0.0.1,
over TLS, node authentication and the gateway, as the README starts them."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from tests.helpers.data import write_partner_csvs
from tests.helpers.deploy import (
    TINY_RUN,
    assert_model_changed,
    assert_nothing_lost,
    client_args,
    node_ids,
    server_args,
    server_records,
)
from tests.helpers.pki import make_pki
from tests.helpers.processes import free_port, processes, start

pytestmark = pytest.mark.e2e

NODES = [f"partner{i:02d}" for i in range(10)]


def test_ten_deployed_nodes_complete_their_rounds(tmp_path):
    pki = make_pki(tmp_path / "certs", NODES)
    data = write_partner_csvs(tmp_path, NODES, rows_each=60)
    port, run_dir = free_port(), tmp_path / "run"
    with processes() as started:
        # Every round asks all ten: Flower samples max(min, fraction x online) nodes.
        server = start(started, server_args(
            pki, port, tmp_path / "coord", *TINY_RUN, "--num-rounds", "2",
            "--min-train-clients", "10", "--min-available-clients", "10",
            "--run-dir", str(run_dir), timeout=840), tmp_path / "server.log")
        server.wait_for(r"started run \d+", 120)
        for name in NODES:
            start(started, client_args(f"127.0.0.1:{port}", pki, name, data[name], 8.0,
                                       tmp_path / f"node-{name}", free_port(),
                                       "--max-wait-time", "600"),
                  tmp_path / f"client-{name}.log")
        code = server.wait(900)
        assert code == 0, server.tail()
    assert re.search(r"run \d+ finished:completed", server.text())
    ids = node_ids(server.text())
    assert set(ids) == set(NODES)
    kinds = defaultdict(list)
    for rec in server_records(run_dir):
        kinds[rec.node_id].append((rec.round, rec.kind))
    for node_id in ids.values():
        assert kinds[node_id] == [(1, "train"), (2, "train"), (2, "attestation")]
    assert_model_changed(run_dir, 2)
    assert_nothing_lost(run_dir, tmp_path, ids, pki)
