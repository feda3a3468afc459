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

One module per concern, read in this order: `record` (what a node spent), `keys`
(the node's Ed25519 signing key), `provenance` (fingerprints and the data commitment
in a record's `extra`), `entry` (signing, hashing, the entry's shape), `verify` (the
chain checks), `store` (JSONL files). Nothing here imports Flower: the wire format is
`common.wire`, so an auditor's tools run without it.
"""
