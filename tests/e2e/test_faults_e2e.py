"""Faults with real processes: a node killed mid-round, a coordinator killed and resumed.

Real `fedpriv server` / `fedpriv client` processes (Flower's SuperLink and SuperNodes,
TLS, node authentication) on 127.0.0.1. Kills are SIGKILL of the whole process family:
nothing gets to clean up, as when a machine loses power.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from common.data import EMBEDDED_LABELS
from server.checkpoint import checkpoint_path, saved_rounds
from tests.helpers.data import write_partner_csvs
from tests.helpers.deploy import (
    TINY_RUN,
    assert_model_changed,
    assert_nothing_lost,
    client_args,
    node_ids,
    rounds_reported,
    server_args,
    server_records,
)
from tests.helpers.pki import make_pki
from tests.helpers.processes import crash, free_port, processes, start, wait_until

pytestmark = pytest.mark.e2e


def test_a_node_killed_mid_round_is_left_out_recorded_and_rejoins(tmp_path):
    names = ["alice", "bob", "carol"]
    pki = make_pki(tmp_path / "certs", names)
    data = write_partner_csvs(tmp_path, names)
    port, run_dir = free_port(), tmp_path / "run"
    ports = {name: free_port() for name in names}

    def node(name: str) -> list[str]:
        return client_args(f"127.0.0.1:{port}", pki, name, data[name], 8.0,
                           tmp_path / f"node-{name}", ports[name], "--max-wait-time", "300")

    with processes() as started:
        server = start(started, server_args(
            pki, port, tmp_path / "coord", *TINY_RUN, "--num-rounds", "3",
            # Every round asks all three (Flower samples max(min, fraction x online) nodes);
            # two updates are enough to aggregate.
            "--min-train-clients", "3", "--min-available-clients", "3", "--min-updates", "2",
            "--run-dir", str(run_dir), timeout=600), tmp_path / "server.log")
        server.wait_for(r"started run \d+", 120)
        clients = {name: start(started, node(name), tmp_path / f"client-{name}.log")
                   for name in names}
        # Carol dies as soon as her round-1 request arrives: before she trains or signs.
        clients["carol"].wait_for(r"Receiving: train message", 180)
        crash(clients["carol"])
        wait_until(lambda: checkpoint_path(run_dir, 1).exists(), 240, "round 1", server)
        # She comes back with the same key and state dir, and is asked again from round 2.
        clients["carol"] = start(started, node("carol"), tmp_path / "client-carol-2.log")
        code = server.wait(600)
        assert code == 0, server.tail()

    ids = node_ids(server.text())
    carol = ids["carol"]
    rows = Counter((r.round, r.node_id, r.kind) for r in server_records(run_dir))
    assert rows == Counter({(1, ids["alice"], "train"): 1, (1, ids["bob"], "train"): 1,
                            **{(r, ids[n], "train"): 1 for r in (2, 3) for n in names},
                            **{(3, ids[n], "attestation"): 1 for n in names}})
    metrics = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    round1 = next(row for row in metrics if row["round"] == 1)
    assert round1["trained"] == 2 and round1["aggregated"]
    assert [f["node"] for f in round1["failures"]] == [carol]
    assert all(row["trained"] == 3 and not row["failures"] for row in metrics if row["round"] > 1)
    assert_nothing_lost(run_dir, tmp_path, ids, pki)


def test_a_coordinator_killed_after_round_1_resumes_with_nothing_lost(tmp_path):
    names = ["alice", "bob"]
    pki = make_pki(tmp_path / "certs", names)
    data = write_partner_csvs(tmp_path, names)
    port, run_dir = free_port(), tmp_path / "run"
    with processes() as started:
        server = start(started, server_args(pki, port, tmp_path / "coord", *TINY_RUN,
                                            "--num-rounds", "3", "--run-dir", str(run_dir)),
                       tmp_path / "server.log")
        killed_run = server.wait_for(r"started run (\d+)", 120).group(1)
        for name in names:
            start(started, client_args(f"127.0.0.1:{port}", pki, name, data[name], 8.0,
                                       tmp_path / f"node-{name}", free_port(),
                                       "--max-wait-time", "300"),
                  tmp_path / f"client-{name}.log")
        wait_until(lambda: rounds_reported(run_dir) >= 1, 240, "round 1", server)
        crash(server)
        assert not checkpoint_path(run_dir, 3).exists()
        # The kill also damaged the newest checkpoint: its last byte is flipped.
        newest = checkpoint_path(run_dir, saved_rounds(run_dir)[-1])
        damaged = bytearray(newest.read_bytes())
        damaged[-1] ^= 0xFF
        newest.write_bytes(bytes(damaged))
        resumed = start(started, server_args(pki, port, tmp_path / "coord", "--resume",
                                             str(run_dir), timeout=600),
                        tmp_path / "server-resumed.log")
        code = resumed.wait(600)
        assert code == 0, resumed.tail()

    log = " ".join(resumed.text().split())  # rich wraps long lines
    assert f"checkpoint {newest} is damaged" in log and "using the checkpoint before it" in log
    assert newest.with_name(newest.name + ".corrupt").read_bytes() == bytes(damaged)  # kept
    assert "resuming" in log
    # The killed run is stopped first: its last message may lack its content for good.
    assert f"stopped run {killed_run}, left unfinished by an earlier start" in log
    ids = node_ids(server.text())
    rows = Counter((r.round, r.node_id) for r in server_records(run_dir) if r.kind == "train")
    assert rows == Counter({(r, ids[n]): 1 for r in (1, 2, 3) for n in names})
    assert {r.run_id for r in server_records(run_dir)} == {
        json.loads((run_dir / "run.json").read_text())["ledger_run"]}
    exported = json.loads((run_dir / "final_model" / "config.json").read_text())
    assert sorted(exported["id2label"].values()) == sorted(EMBEDDED_LABELS)
    assert_model_changed(run_dir, 3)
    assert_nothing_lost(run_dir, tmp_path, ids, pki)
    assert [row["round"] for row in json.loads((run_dir / "metrics.json").read_text())["rounds"]
            ][-1] == 3
