"""The ledger: keys, signed hash-chained entries, and detection of every kind of tampering."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from common.errors import FedPrivError, LedgerError
from common.ledger.entry import (
    GENESIS,
    entry_from_json,
    entry_hash,
    entry_to_json,
    make_entry,
    record_of_entry,
    signature_ok,
    with_receipt,
)
from common.ledger.keys import (
    generate_signing_key,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    public_key_hex,
    save_private_key,
    save_public_key,
)
from common.ledger.provenance import data_commitment, fingerprint_arrays, make_extra
from common.ledger.store import NodeLedger, append_received, read_entries, read_ledger
from common.ledger.verify import verify_entries
from tests.helpers.records import node_ledgers, rewrite_lines
from tests.helpers.records import train_record as record

NODES = ("alice", "bob")


@pytest.fixture
def fed(tmp_path: Path):
    """Two nodes, three rounds: each node's own ledger and the server's combined one."""
    ledgers = node_ledgers(tmp_path, NODES)
    keys = {n: load_private_key(tmp_path / "private" / f"{n}.pem") for n in NODES}
    server = tmp_path / "server.jsonl"
    for r in (1, 2, 3):
        for i, n in enumerate(NODES):
            entry = ledgers[n].append(record(r, node_id=i + 1), make_extra(model_in="ab" * 32))
            append_received(server, entry, received_from=i + 1, received_at=2000.0 + r)
    return {"keys": keys, "ledgers": ledgers, "server": server,
            "trusted": load_trusted_keys(tmp_path / "keys"), "dir": tmp_path}


def whats(problems) -> str:
    return "\n".join(str(p) for p in problems)


# --- keys ---------------------------------------------------------------------------


def test_private_key_is_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "node.pem"
    key = generate_signing_key()
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(LedgerError, match="already exists"):
        save_private_key(generate_signing_key(), path)
    assert public_key_hex(load_private_key(path)) == public_key_hex(key)
    other = generate_signing_key()
    save_private_key(other, path, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_hex(load_private_key(path)) == public_key_hex(other)


def test_encrypted_private_key_round_trips(tmp_path: Path) -> None:
    key = generate_signing_key()
    path = save_private_key(key, tmp_path / "k.pem", password=b"s3cret")
    with pytest.raises(LedgerError, match=str(path)):
        load_private_key(path)
    assert public_key_hex(load_private_key(path, password=b"s3cret")) == public_key_hex(key)


def test_key_errors_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    private = save_private_key(generate_signing_key(), tmp_path / "secret.pem")
    public = save_public_key(generate_signing_key(), tmp_path / "pub.pub")
    for call, path, match in ((load_private_key, tmp_path / "missing.pem", "not found"),
                              (load_private_key, garbage, "not a PEM private key"),
                              (load_public_key, garbage, "not a PEM public key"),
                              (load_public_key, private, "PRIVATE key"),
                              (load_private_key, public, "not a PEM private key")):
        with pytest.raises(FedPrivError, match=match) as info:
            call(path)
        assert str(path) in str(info.value)


def test_trusted_keys_folder(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="not found"):
        load_trusted_keys(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LedgerError, match="no \\*.pub"):
        load_trusted_keys(tmp_path / "empty")
    key = generate_signing_key()
    save_public_key(key, tmp_path / "k" / "alice.pub")
    (tmp_path / "k" / "README.txt").write_text("ignored")
    assert list(load_trusted_keys(tmp_path / "k")) == ["alice"]
    save_public_key(key, tmp_path / "k" / "alias.pem")
    with pytest.raises(LedgerError, match="same key"):
        load_trusted_keys(tmp_path / "k")


# --- entries and the node's ledger ------------------------------------------------------


def test_entry_is_signed_and_chained(fed) -> None:
    entries = read_entries(fed["ledgers"]["alice"].path)
    assert [e["prev_hash"] for e in entries] == [
        GENESIS, entry_hash(entries[0]), entry_hash(entries[1])]
    assert all(signature_ok(e) for e in entries)
    assert entries[0]["node_key"] == public_key_hex(fed["keys"]["alice"])
    assert record_of_entry(entries[2]) == record(3, node_id=1, extra={"model_in": "ab" * 32})
    assert entries[0]["record"]["extra"] == {"model_in": "ab" * 32}
    assert entry_from_json(entry_to_json(entries[0])) == entries[0]


def test_reopening_continues_the_chain(fed) -> None:
    path = fed["ledgers"]["alice"].path
    last = entry_hash(read_entries(path)[-1])
    again = NodeLedger(path, fed["keys"]["alice"])
    assert again.last_hash == last
    entry = again.append(record(4))
    assert entry["prev_hash"] == last
    assert verify_entries(read_ledger(path), fed["trusted"]) == []


def test_node_refuses_to_extend_a_tampered_ledger(fed) -> None:
    path = fed["ledgers"]["alice"].path
    rewrite_lines(path, lambda es: [es[0], es[2]])
    with pytest.raises(LedgerError, match="does not verify"):
        NodeLedger(path, fed["keys"]["alice"])


def test_cut_off_last_line_is_refused(fed) -> None:
    path = fed["ledgers"]["alice"].path
    path.write_text(path.read_text()[:-20])
    with pytest.raises(LedgerError, match="cut-off"):
        NodeLedger(path, fed["keys"]["alice"])
    with pytest.raises(LedgerError, match=f"{path}:3"):
        read_ledger(path)


def test_malformed_line_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text('\n{"record": {}}\n')
    with pytest.raises(LedgerError, match=f"{path}:2: ledger entry lacks prev_hash"):
        read_ledger(path)


# --- verification: a clean ledger passes, each kind of tampering is caught -------------


def test_clean_node_and_server_ledgers_verify(fed) -> None:
    for path in (fed["server"], fed["ledgers"]["alice"].path, fed["ledgers"]["bob"].path):
        assert verify_entries(read_ledger(path), fed["trusted"]) == []
    server = read_entries(fed["server"])
    assert server[0]["received_from"] == 1  # server fields sit outside the signed part


def test_changed_number_is_caught(fed) -> None:
    def edit(es):
        es[2]["record"]["epsilon"] = 0.5  # alice, round 2
        return es
    rewrite_lines(fed["server"], edit)
    problems = whats(verify_entries(read_ledger(fed["server"]), fed["trusted"]))
    assert f"{fed['server']}:3: node alice round 2: bad signature" in problems
    assert f"{fed['server']}:5: node alice round 3: broken chain" in problems


def test_deleted_record_is_caught(fed) -> None:
    rewrite_lines(fed["server"], lambda es: es[:2] + es[4:])  # round 2 of both nodes gone
    problems = verify_entries(read_ledger(fed["server"]), fed["trusted"])
    assert {(p.node, p.round) for p in problems} == {("alice", 3), ("bob", 3)}
    assert all("broken chain" in p.what for p in problems)


def test_swapped_records_are_caught(fed) -> None:
    path = fed["ledgers"]["bob"].path
    rewrite_lines(path, lambda es: [es[0], es[2], es[1]])
    problems = whats(verify_entries(read_ledger(path), fed["trusted"]))
    assert "comes later in the file" in problems
    assert "round goes back" in problems


def test_record_signed_by_another_key_is_caught(fed) -> None:
    intruder = generate_signing_key()
    last = read_entries(fed["ledgers"]["alice"].path)[-1]
    forged = make_entry(record(4, node_id=1), None, entry_hash(last), intruder)
    append_received(fed["server"], forged, received_from=1)
    problems = whats(verify_entries(read_ledger(fed["server"]), fed["trusted"]))
    assert "not among the trusted keys" in problems
    assert "also claimed by key alice" in problems


def test_record_signed_by_another_trusted_node_is_caught(fed) -> None:
    bob_last = read_entries(fed["ledgers"]["bob"].path)[-1]
    as_alice = make_entry(record(4, node_id=1), None, entry_hash(bob_last), fed["keys"]["bob"])
    append_received(fed["server"], as_alice, received_from=1)
    problems = whats(verify_entries(read_ledger(fed["server"]), fed["trusted"]))
    assert "node bob round 4: node_id 1 of run 7 is also claimed by key alice" in problems


def test_record_appended_after_the_fact_is_caught(fed) -> None:
    # Signed by the right key, but not chained to the node's last entry.
    late = make_entry(record(4), None, GENESIS, fed["keys"]["alice"])
    append_received(fed["server"], late, received_from=1)
    problems = verify_entries(read_ledger(fed["server"]), fed["trusted"])
    assert len(problems) == 1 and problems[0].round == 4
    assert "starts a new chain" in problems[0].what


def test_duplicate_line_is_caught(fed) -> None:
    rewrite_lines(fed["server"], lambda es: es + [es[0]])
    problems = verify_entries(read_ledger(fed["server"]), fed["trusted"])
    assert [p.what for p in problems] == [f"duplicate of {fed['server']}:1"]


def test_server_fields_cannot_replace_signed_ones(fed) -> None:
    entry = read_entries(fed["ledgers"]["alice"].path)[0]
    with pytest.raises(LedgerError, match="signature"):
        with_receipt(entry, received_from=1, signature="00")


# --- fingerprints ---------------------------------------------------------------------


def test_fingerprints() -> None:
    a = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
    assert fingerprint_arrays(a) == fingerprint_arrays([x.copy() for x in a])
    assert fingerprint_arrays(a) != fingerprint_arrays([a[0].reshape(3, 2), a[1]])
    digest = "12" * 32
    assert data_commitment(digest, b"x" * 16) != data_commitment(digest, b"y" * 16)
    with pytest.raises(LedgerError, match="salt"):
        data_commitment(digest, b"short")


def test_record_field_of_the_wrong_type_is_refused(fed) -> None:
    path = fed["ledgers"]["alice"].path

    def edit(es):
        es[1]["record"]["steps"] = "30"
        return es
    rewrite_lines(path, edit)
    with pytest.raises(LedgerError, match=f"{path}:2: .*field steps is '30': expected int"):
        read_ledger(path)


def test_a_second_run_ledger_may_follow_the_nodes_earlier_runs_but_not_skip_records(
        fed) -> None:
    """A partner's second federation: its chain goes on from entries kept elsewhere."""
    alice = fed["ledgers"]["alice"]
    second = fed["dir"] / "second-run.jsonl"
    for r in (1, 2):
        append_received(second, alice.append(record(r, run_id=8)), received_from=1)
    assert verify_entries(read_ledger(second), fed["trusted"]) == []
    # Cutting the run's first record leaves one that counts steps before it: caught.
    rewrite_lines(second, lambda es: es[1:])
    problems = verify_entries(read_ledger(second), fed["trusted"])
    assert [(p.round, "broken chain" in p.what) for p in problems] == [(2, True)]
