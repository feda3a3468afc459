"""The privacy record: what a node spent in one round, and everything else it disclosed.

A node attaches one record to every reply, signed and chained into a ledger entry
(`common.ledger.entry`). The entry travels in the reply as canonical JSON
(`common.wire`), so the bytes an auditor reads in the ledger are the bytes the node signed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# An attestation closes a node's part in a run: signed when the run ends, it states the
# node's chain head (its prev_hash), its total steps and its cumulative epsilon, so a
# coordinator that cuts the node's tail or drops the node is caught (common.completeness).
ATTESTATION = "attestation"
ATTESTS_KEY = "attests"  # in an attestation's extra: {"entries": n, "train_rounds": k}
KINDS = ("train", "refused", "evaluate", ATTESTATION)


@dataclass(frozen=True)
class PrivacyRecord:
    run_id: int
    round: int
    node_id: int
    kind: str                 # train | refused | evaluate | attestation
    mechanism: str            # MECHANISM of common.privacy, or "none" for non-DP baselines
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int                # DP-SGD steps taken this round
    total_steps: int          # all steps so far in this run, this round included
    max_grad_norm: float
    delta: float
    epsilon: float            # cumulative epsilon spent after this round
    epsilon_budget: float     # the most this node accepts to spend
    # Everything besides the noised update that left the node with this reply,
    # by name, with its value (e.g. the number of training examples).
    disclosed: dict[str, float | int] = field(default_factory=dict)
    reason: str = ""
    created_at: float = field(default_factory=time.time)
    # Provenance for auditors, signed with the record in the node's ledger: fingerprints
    # of the models and a commitment to the data, accountant settings, round times
    # (see common.ledger.provenance.make_extra). Hashes and settings only, never data.
    extra: dict[str, Any] = field(default_factory=dict)
