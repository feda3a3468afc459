"""Completeness of a ledger: every trusted node is in it, and each closes its runs.

A hash chain shows a removed, changed or reordered entry, but not a cut tail (the
newest entries removed) nor a node whose entries were all removed. Both show here:

- each node's entries of a run must end in its signed end-of-run attestation
  (client/attestation.py), which names the node's chain head (its prev_hash) and how
  many of the run's entries came before it. A cut tail leaves the attestation pointing
  at an entry that is gone, or no attestation at all;
- every trusted key must have entries in the ledger (or, with --compare, in the other
  copy).

A node the auditor declares absent (it took no part, or left before the end) is
exempt: its missing attestation or records are reported as warnings and notes, not
failures. A ledger written before nodes attested has no attestations: it fails here,
and names the flag that audits it all the same.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from common.ledger.entry import EXTRA_KEY, LedgerLine
from common.ledger.record import ATTESTATION, ATTESTS_KEY
from common.ledger.verify import Problem, node_name

ATTESTED, UNATTESTED, DECLARED_ABSENT = "yes", "no", "absent"


@dataclass
class Completeness:
    """What completeness found: failures, warnings, notes, and each group's status."""

    failures: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_closed(group: Sequence[LedgerLine], names: Mapping[str, str],
               absent: Collection[str], found: Completeness) -> str:
    """Whether one node's entries of one run end in its matching attestation.

    Returns the group's status (ATTESTED, UNATTESTED or DECLARED_ABSENT) and adds to
    `found` what is wrong.
    """
    last = group[-1]
    rec = last.entry["record"]
    name = node_name(last.entry["node_key"], names)
    if rec["kind"] != ATTESTATION:
        what = ("no end-of-run attestation after this entry: the node's newest entries may "
                "have been cut (compare with its own ledger, --compare), or it left before "
                "the end of the run")
        if name in absent:
            found.warnings.append(Problem(last.where, name, rec["round"],
                                          f"{what}; declared absent, so not a failure"))
            return DECLARED_ABSENT
        found.failures.append(Problem(
            last.where, name, rec["round"], f"{what} (declare it with --absent {name}; a "
            "ledger from before nodes attested has no attestations: declare every node)"))
        return UNATTESTED
    attests = (rec.get(EXTRA_KEY) or {}).get(ATTESTS_KEY) or {}
    before = len(group) - 1
    if attests.get("entries") != before:
        found.failures.append(Problem(
            last.where, name, rec["round"],
            f"the attestation covers {attests.get('entries')} entries of run "
            f"{rec['run_id']} before it, the ledger holds {before}: entries were cut"))
        return UNATTESTED
    return ATTESTED


def nodes_present(keys_seen: Collection[str], names: Mapping[str, str],
                  absent: Collection[str], where: str, found: Completeness) -> None:
    """Every trusted key (hex -> name in `names`) has entries, unless declared absent."""
    for key, name in sorted(names.items(), key=lambda kv: kv[1]):
        if key in keys_seen:
            if name in absent:
                found.notes.append(f"node {name} was declared absent but has entries: they "
                                   "are audited like any other")
            continue
        if name in absent:
            found.notes.append(f"node {name}: no entries, as declared (--absent)")
        else:
            found.failures.append(Problem(
                where, name, None, "trusted key with no entries in the ledger: the "
                "coordinator dropped the node's records, or it took no part in the run "
                f"(then declare it with --absent {name})"))
