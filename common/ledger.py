"""The privacy ledger: every privacy record a node produces, signed and hash-chained.

An entry is one JSON line::

    {"record": {...PrivacyRecord fields..., "extra": {...}},
     "prev_hash": "<sha256 hex of this node's previous entry, or 64 zeros>",
     "node_key": "<hex of the node's raw Ed25519 public key>",
     "signature": "<hex Ed25519 signature over canonical {record, prev_hash, node_key}>"}

The node signs with a key only it holds, so the coordinator (which stores and
forwards entries) cannot forge or alter a node's record without the signature
failing. Each entry names the hash of the node's previous entry, so a removed,
reordered or inserted entry breaks that node's chain. Chains are per node key: the
server's combined ledger interleaves many nodes and may add fields of its own
(e.g. ``received_from``, ``received_at``) outside the signed part; an entry's hash
covers only the four fields above, so those additions change nothing.

What a chain cannot show by itself is a truncated tail (the newest entries
removed): compare the server's ledger with the node's own copy for that
(`common.audit.compare_ledgers`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from flwr.app import ConfigRecord, Message, RecordDict

from common.errors import FedPrivError
from common.files import write_atomic
from common.records import KINDS, RECORD_KEY, PrivacyRecord

GENESIS = "0" * 64
SIGNED_FIELDS = ("record", "prev_hash", "node_key")
ENTRY_FIELDS = (*SIGNED_FIELDS, "signature")
EXTRA_KEY = "extra"
PUBLIC_KEY_SUFFIXES = (".pub", ".pem")


class LedgerError(FedPrivError):
    """A key or ledger file cannot be used as it is; the message names the file."""


# --- keys -------------------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: str | Path, *, force: bool = False,
                     password: bytes | None = None) -> Path:
    """Write `key` as PKCS#8 PEM readable by its owner only (0600).

    An existing file is never replaced unless `force`: losing a node's key means its
    ledger chain cannot be continued under the same identity.
    """
    path = Path(path)
    if path.exists() and not force:
        raise LedgerError(f"signing key {path} already exists: keep it, or pass force to "
                          "replace it (the node's ledger then continues under a new key)")
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            encryption)
    write_atomic(path, pem, mode=0o600)
    return path


def save_public_key(key: Ed25519PublicKey | Ed25519PrivateKey, path: str | Path, *,
                    force: bool = False) -> Path:
    """Write the public half as SubjectPublicKeyInfo PEM: the file an auditor trusts.

    Name it `<node name>.pub`; the auditor's keys folder maps that name to the key.
    """
    path = Path(path)
    if path.exists() and not force:
        raise LedgerError(f"public key {path} already exists: pass force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_public(key).public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def create_node_key(private_path: str | Path, public_path: str | Path | None = None, *,
                    force: bool = False) -> Ed25519PrivateKey:
    """Generate a node's key, save it (0600) and its public half (default: `.pub` beside it)."""
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    if public_path.exists() and not force:
        raise LedgerError(f"public key {public_path} already exists: pass force to replace it")
    key = generate_signing_key()
    save_private_key(key, private_path, force=force)
    save_public_key(key, public_path, force=True)
    return key


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    path = Path(path)
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:  # encrypted without a password, or a password it does not need
        raise LedgerError(f"signing key {path}: {exc}") from None
    except ValueError:
        raise LedgerError(f"signing key {path} is not a PEM private key (or the password "
                          "is wrong)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(f"signing key {path} is a {type(key).__name__}, not Ed25519")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise LedgerError(f"public key {path} holds a PRIVATE key: give auditors only the "
                          "public half (save_public_key), and keep this file on the node")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise LedgerError(f"public key {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerError(f"public key {path} is a {type(key).__name__}, not Ed25519")
    return key


def load_trusted_keys(keys_dir: str | Path) -> dict[str, Ed25519PublicKey]:
    """The node name (file stem) -> public key of every `*.pub`/`*.pem` in `keys_dir`."""
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise LedgerError(f"keys folder {keys_dir} not found: give a folder of "
                          "<node>.pub Ed25519 public keys (PEM)")
    keys: dict[str, Ed25519PublicKey] = {}
    seen: dict[str, str] = {}
    for path in sorted(keys_dir.iterdir()):
        if path.suffix not in PUBLIC_KEY_SUFFIXES or not path.is_file():
            continue
        if path.stem in keys:
            raise LedgerError(f"keys folder {keys_dir} has two keys named {path.stem!r}: "
                              "keep one file per node")
        key = load_public_key(path)
        hexkey = public_key_hex(key)
        if hexkey in seen:
            raise LedgerError(f"keys {path} and {seen[hexkey]} are the same key: one node, "
                              "one file")
        keys[path.stem] = key
        seen[hexkey] = str(path)
    if not keys:
        raise LedgerError(f"keys folder {keys_dir} holds no *.pub or *.pem public keys")
    return keys


def public_key_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Hex of the raw 32-byte public key: how an entry names its signer."""
    return _public(key).public_bytes(serialization.Encoding.Raw,
                                     serialization.PublicFormat.Raw).hex()


def _public(key: Ed25519PublicKey | Ed25519PrivateKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise LedgerError(f"{what} {path} not found") from None
    except OSError as exc:
        raise LedgerError(f"{what} {path} cannot be read: {exc.strerror}") from None


# --- fingerprints for the record's `extra` ---------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_arrays(arrays: Iterable[np.ndarray]) -> str:
    """sha256 over dtype, shape and bytes of each array: names a model's exact weights."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def data_commitment(data_sha256: str, salt: bytes) -> str:
    """A hiding commitment to the node's data: HMAC-SHA256(salt, sha256 of the data).

    A plain hash of the data would break DP: an adversary who knows all records but
    one can test each candidate for the missing one against the hash. With a secret
    random salt (>= 16 bytes, kept on the node) the commitment reveals nothing; the
    node can later open it to an auditor by disclosing the salt.
    """
    if len(salt) < 16:
        raise LedgerError("data commitment salt must be at least 16 random bytes")
    return hmac.new(salt, bytes.fromhex(data_sha256), hashlib.sha256).hexdigest()


def make_extra(*, model_in: str | None = None, model_out: str | None = None,
               data: str | None = None, accountant_settings: Mapping[str, Any] | None = None,
               started_at: float | None = None, finished_at: float | None = None,
               **more: Any) -> dict[str, Any]:
    """The record's `extra` under standard names; only the given items are kept.

    model_in: fingerprint of the global model the node received; model_out: of the
    update it sent; data: `data_commitment` of its training data; accountant_settings:
    e.g. {"opacus": version, "eps_error": 0.01}; started_at/finished_at: the round's
    local wall-clock times.
    """
    items = {"model_in": model_in, "model_out": model_out, "data": data,
             "accountant_settings": dict(accountant_settings) if accountant_settings else None,
             "started_at": started_at, "finished_at": finished_at, **more}
    return {k: v for k, v in items.items() if v is not None}


# --- entries ------------------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    """The one byte form that is signed and hashed: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def signed_part(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in SIGNED_FIELDS}


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of the entry's canonical JSON (signature included, server fields excluded)."""
    return sha256_hex(canonical({k: entry[k] for k in ENTRY_FIELDS}))


def record_dict(record: PrivacyRecord, extra: Mapping[str, Any] | None = None) -> dict:
    """The record as signed: its fields, with `extra` merged into the record's own.

    Round-tripped through canonical JSON so the signed dict is exactly what a reader
    of the file will parse (tuples become lists, and so on).
    """
    fields = asdict(record)
    fields[EXTRA_KEY] = {**fields.get(EXTRA_KEY, {}), **(extra or {})}
    return json.loads(canonical(fields))


def make_entry(record: PrivacyRecord, extra: Mapping[str, Any] | None, prev_hash: str,
               key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {"record": record_dict(record, extra), "prev_hash": prev_hash,
            "node_key": public_key_hex(key)}
    return {**body, "signature": key.sign(canonical(body)).hex()}


def signature_ok(entry: Mapping[str, Any]) -> bool:
    """Whether the entry's signature verifies under the key the entry names."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["node_key"]))
        key.verify(bytes.fromhex(entry["signature"]), canonical(signed_part(entry)))
    except (InvalidSignature, ValueError, TypeError, KeyError):
        return False
    return True


def record_of_entry(entry: Mapping[str, Any]) -> PrivacyRecord:
    """The PrivacyRecord an entry carries."""
    return PrivacyRecord(**entry["record"])


def entry_to_json(entry: Mapping[str, Any]) -> str:
    return canonical(entry).decode()


def entry_from_json(text: str) -> dict[str, Any]:
    """Parse one entry (e.g. as received from a node); LedgerError if it is not one."""
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"ledger entry is not JSON: {exc.msg} at column {exc.colno}") from None
    problem = shape_problem(entry)
    if problem:
        raise LedgerError(f"ledger entry {problem}")
    return entry


def with_receipt(entry: Mapping[str, Any], **server_fields: Any) -> dict[str, Any]:
    """The entry plus fields the server adds (received_from, received_at...), unsigned."""
    clash = set(server_fields) & set(ENTRY_FIELDS)
    if clash:
        raise LedgerError(f"server fields may not replace signed fields: {sorted(clash)}")
    return {**{k: entry[k] for k in ENTRY_FIELDS}, **server_fields}


def shape_problem(entry: Any) -> str:
    """What is structurally wrong with an entry, or '' when it has the right form."""
    if not isinstance(entry, dict):
        return "is not a JSON object"
    missing = [k for k in ENTRY_FIELDS if k not in entry]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(entry["record"], dict):
        return "record is not an object"
    for name, size in (("prev_hash", 64), ("node_key", 64), ("signature", 128)):
        value = entry[name]
        if not (isinstance(value, str) and len(value) == size and _is_hex(value)):
            return f"{name} is not {size} hex digits"
    try:
        record_of_entry(entry)
    except TypeError as exc:
        return f"record does not have the PrivacyRecord fields ({exc})"
    rec = entry["record"]
    for name, kinds in _RECORD_TYPES.items():
        if name not in rec:  # a field with a default
            continue
        if not isinstance(rec[name], kinds) or isinstance(rec[name], bool):
            return f"record field {name} is {rec[name]!r}: expected {kinds[0].__name__}"
    if rec["kind"] not in KINDS:
        return f"record kind {rec['kind']!r} is not one of {', '.join(KINDS)}"
    return ""


# JSON types of the record fields the audit computes with.
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("run_id", "round", "node_id", "steps", "total_steps"), (int,)),
    **dict.fromkeys(("noise_multiplier", "sample_rate", "max_grad_norm", "delta", "epsilon",
                     "epsilon_budget"), (float, int)),
    **dict.fromkeys(("kind", "mechanism", "accountant"), (str,)),
    "disclosed": (dict,),
    EXTRA_KEY: (dict,),
}


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return True


# --- files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerLine:
    """One entry and where it was read from (for messages an auditor can act on)."""

    path: str
    line: int
    entry: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_ledger(path: str | Path) -> list[LedgerLine]:
    """Every entry of a JSONL ledger (a node's copy or the server's combined one).

    Blank lines are skipped; anything else that is not an entry raises LedgerError
    naming the file and line, since an auditor cannot reason about a line that
    does not parse.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LedgerError(f"ledger {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"ledger {path} cannot be read: {exc}") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{path}:{number}: not a JSON ledger entry ({exc.msg}, column "
                              f"{exc.colno}); a cut-off last line means a write was "
                              "interrupted") from None
        problem = shape_problem(entry)
        if problem:
            raise LedgerError(f"{path}:{number}: ledger entry {problem}")
        lines.append(LedgerLine(str(path), number, entry))
    return lines


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    return [line.entry for line in read_ledger(path)]


def append_line(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # One write() of one line under O_APPEND: concurrent appenders do not interleave
        # within a line on local filesystems.
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def append_received(path: str | Path, entry: Mapping[str, Any], *, received_from: Any,
                    received_at: float | None = None) -> None:
    """The server's writer: append a node's entry to the combined ledger with a receipt."""
    append_line(path, with_receipt(entry, received_from=received_from,
                                   received_at=time.time() if received_at is None
                                   else received_at))


class NodeLedger:
    """A node's own append-only ledger file, signed with the node's key.

    Opening an existing file verifies this key's chain in it and continues from its
    last entry; a broken local chain is refused rather than extended.
    """

    def __init__(self, path: str | Path, private_key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self._key = private_key
        self.node_key = public_key_hex(private_key)
        self.last_hash = GENESIS
        if self.path.exists():
            self._resume()

    def _resume(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            raise LedgerError(f"ledger {self.path} ends in a cut-off line (an interrupted "
                              "write): move the file aside and check it with `fedpriv audit`")
        own = [line for line in read_ledger(self.path) if line.entry["node_key"] == self.node_key]
        problems = verify_entries(own)
        if problems:
            raise LedgerError(f"ledger {self.path} does not verify ({problems[0]}): refusing "
                              "to extend it")
        if own:
            self.last_hash = entry_hash(own[-1].entry)

    def sign(self, record: PrivacyRecord, extra: Mapping[str, Any] | None = None) -> dict:
        """The entry for `record` (+ `extra`) chained after the last one; not yet written."""
        return make_entry(record, extra, self.last_hash, self._key)

    def commit(self, entry: Mapping[str, Any]) -> None:
        """Write a signed entry durably, unless the ledger holds it already."""
        h = entry_hash(entry)
        if h == self.last_hash or h in {entry_hash(e) for e in self.entries()}:
            return
        if entry["prev_hash"] != self.last_hash:
            raise LedgerError(f"ledger {self.path}: the entry does not follow the last one "
                              "(signed before a later entry was written)")
        append_line(self.path, entry)
        self.last_hash = h

    def append(self, record: PrivacyRecord, extra: Mapping[str, Any] | None = None) -> dict:
        """Sign `record` (+ `extra`) onto the chain, write it durably, return the entry."""
        entry = self.sign(record, extra)
        self.commit(entry)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        return read_entries(self.path) if self.path.exists() else []

    def after(self, head: str, run_id: int) -> list[dict[str, Any]]:
        """This key's entries of run `run_id` written after the entry hashed `head`.

        With no head (the server holds nothing from this node yet), all of the run's.
        A head not in this ledger names no entry of ours: nothing is sent.
        """
        own = [e for e in self.entries() if e["node_key"] == self.node_key]
        hashes = [entry_hash(e) for e in own]
        if head and head not in hashes:
            return []
        start = hashes.index(head) + 1 if head else 0
        return [e for e in own[start:] if e["record"]["run_id"] == run_id]


# --- verification -------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a ledger, located so that an auditor can find it."""

    where: str            # file:line (or #index for entries not read from a file)
    node: str             # trusted name, or the key's first 16 hex digits
    round: int | None
    what: str

    def __str__(self) -> str:
        rnd = f" round {self.round}" if self.round is not None else ""
        return f"{self.where}: node {self.node}{rnd}: {self.what}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_names(trusted_keys: Mapping[str, Ed25519PublicKey] | None) -> dict[str, str]:
    """node_key hex -> trusted name."""
    return {public_key_hex(k): name for name, k in (trusted_keys or {}).items()}


def node_name(node_key: str, names: Mapping[str, str]) -> str:
    return names.get(node_key, node_key[:16])


def as_lines(entries: Sequence[Mapping[str, Any] | LedgerLine]) -> list[LedgerLine]:
    return [e if isinstance(e, LedgerLine) else LedgerLine("#", i, dict(e))
            for i, e in enumerate(entries, start=1)]


def verify_entries(entries: Sequence[Mapping[str, Any] | LedgerLine],
                   trusted_keys: Mapping[str, Ed25519PublicKey] | None = None) -> list[Problem]:
    """Every integrity problem in a ledger (a node's copy or the server's combined one).

    Checks each entry's signature, that its key is trusted (when `trusted_keys` is
    given), each node key's hash chain (an entry must name the hash of that key's
    previous entry: a changed, removed, reordered or inserted entry breaks it),
    duplicates, that no node_id of a run is claimed by two keys, and that a node's
    rounds go forward. An empty list means the ledger is intact.
    """
    names = key_names(trusted_keys)
    problems: list[Problem] = []
    last: dict[str, str] = {}               # node_key -> hash of its latest entry
    where_of: dict[str, LedgerLine] = {}    # entry hash -> first line holding it
    seen_round: dict[tuple, LedgerLine] = {}
    owner: dict[tuple[Any, Any], str] = {}
    last_round: dict[tuple[str, Any], int] = {}

    lines = as_lines(entries)
    anywhere: dict[str, LedgerLine] = {}    # entry hash -> first line, over the whole ledger
    for ln in lines:
        if not shape_problem(ln.entry):
            anywhere.setdefault(entry_hash(ln.entry), ln)

    for ln in lines:
        e = ln.entry
        shape = shape_problem(e)
        if shape:
            problems.append(Problem(ln.where, "?", None, f"malformed entry: {shape}"))
            continue
        key, rec = e["node_key"], e["record"]
        name, rnd = node_name(key, names), rec.get("round")

        def report(what: str, name: str = name, rnd: Any = rnd, ln: LedgerLine = ln) -> None:
            problems.append(Problem(ln.where, name, rnd, what))

        if trusted_keys is not None and key not in names:
            report(f"signed by key {key[:16]}..., which is not among the trusted keys")
        if not signature_ok(e):
            report("bad signature: the entry was changed after the node signed it")
        h = entry_hash(e)
        if h in where_of:
            report(f"duplicate of {where_of[h].where}")
            continue
        where_of[h] = ln

        expected = last.get(key, GENESIS)
        # A node's first entry here may follow entries of its earlier runs, kept in other
        # ledgers: allowed only where the record itself says its run begins (it counts no
        # steps before its own), so entries cut from the start of a run still show.
        continues_elsewhere = (key not in last and e["prev_hash"] not in anywhere
                               and rec["total_steps"] == rec["steps"])
        if e["prev_hash"] != expected and not continues_elsewhere:
            report(_chain_problem(e["prev_hash"], where_of, anywhere, last.get(key)))
        last[key] = h

        run = rec["run_id"]
        slot = (key, run, rec["round"], rec["kind"])
        if slot in seen_round:
            report(f"second {rec['kind']} record for this round (first at "
                   f"{seen_round[slot].where})")
        seen_round.setdefault(slot, ln)
        if last_round.get((key, run), rec["round"]) > rec["round"]:
            report(f"round goes back from {last_round[(key, run)]} to {rec['round']}")
        last_round[(key, run)] = max(rec["round"], last_round.get((key, run), rec["round"]))
        other = owner.setdefault((run, rec["node_id"]), key)
        if other != key:
            report(f"node_id {rec['node_id']} of run {run} is also claimed by key "
                   f"{node_name(other, names)}: a record signed by another node's key")
    return problems


def _chain_problem(prev: str, where_of: Mapping[str, LedgerLine],
                   anywhere: Mapping[str, LedgerLine], last_hash: str | None) -> str:
    """Why an entry's prev_hash is not its node's previous entry, as precisely as we can."""
    after = f" (the node's previous entry is at {where_of[last_hash].where})" if last_hash else ""
    if prev == GENESIS:
        return ("broken chain: the entry starts a new chain although the node has earlier "
                f"entries{after}: it was inserted or re-signed")
    if prev in where_of:
        return (f"broken chain: the entry follows {where_of[prev].where}{after}: entries "
                "reordered or inserted")
    if prev in anywhere:
        return (f"broken chain: the entry follows {anywhere[prev].where}, which comes later "
                f"in the file{after}: entries reordered")
    return ("broken chain: the entry it follows is not in the ledger (removed, or changed "
            f"after signing){after}")


# --- on the wire ---------------------------------------------------------------------


def entry_recorddict(entry: Mapping[str, Any],
                     earlier: Sequence[Mapping[str, Any]] = ()) -> RecordDict:
    """The reply content that carries a signed entry (the node adds arrays and metrics).

    `earlier` are this node's entries the server may not have (see NodeLedger.after):
    a reply lost with a coordinator that restarted, or a node killed between signing
    and sending. The server keeps those it lacks, so the chain it holds has no gap.
    """
    config = ConfigRecord({"entry": entry_to_json(entry)})
    if earlier:
        config["earlier"] = [entry_to_json(e) for e in earlier]
    return RecordDict({RECORD_KEY: config})


def entries_of_message(message: Message) -> list[dict[str, Any]]:
    """The signed entries a reply carries, oldest first, the reply's own one last.

    LedgerError if there is none, or any is malformed, badly signed or from another key.
    """
    if message.has_error():
        raise LedgerError(f"error reply: {message.error.reason}")
    records = message.content.config_records
    if RECORD_KEY not in records or "entry" not in records[RECORD_KEY]:
        raise LedgerError("reply carries no privacy record")
    carried = records[RECORD_KEY]
    texts = [*carried.get("earlier", []), carried["entry"]]
    entries = [entry_from_json(str(text)) for text in texts]
    for entry in entries:
        if not signature_ok(entry):
            raise LedgerError("privacy record signature does not verify")
        if entry["node_key"] != entries[-1]["node_key"]:
            raise LedgerError("a reply carries entries signed by another node's key")
    return entries


def entry_of_message(message: Message) -> dict[str, Any]:
    """The signed entry of a reply itself (LedgerError as for `entries_of_message`)."""
    return entries_of_message(message)[-1]
