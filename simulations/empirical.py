"""The empirical privacy audit: one simulated run with canaries, and the epsilon it proves.

Threat model (white-box, federated): the adversary is the coordinator. It sees what the
federation shows it, each node's noised update every round and the global model it sent,
and nothing inside a node. It may choose canaries of any form the guarantee covers: the
DP-SGD guarantee holds for every training example, whatever its embedding, because
each example's gradient is clipped before the noise. So the canaries are crafted
embeddings for the frozen encoder's head, each a unit vector along one input axis
(+e_k or -e_k) with a label: one changes, when trained on, only column k of the head's
weights (and the bias), in a direction the auditor knows.

The audit runs the federation as `fedpriv simulate` would (same ServerApp and ClientApp
in Flower's simulation engine, same settings) plus `canary_clients` simulated nodes
that train on canaries instead of rows (client/canaries.py): two per input axis, +e_k
with label a and -e_k with label b != a, each included with probability 1/2. Rows of
other nodes would only add background to the columns the canaries use; the real nodes
train as in any run. After the run, each canary is scored by how its node's updates,
summed over the rounds, moved its column towards its label, measured against a third
"reference" label that neither canary of that column uses:
score = sign x (dW[label, k] - dW[reference, k]). An included canary pushes that
difference its way in every round; an excluded one leaves it to its partner canary,
which moves label and reference alike. The updates are read from each canary node's
outbox, the very replies the coordinator received, checked against their signed
ledger entries and the global models (checkpoints) they started from.

common/empirical.py turns the scores into guesses and the guesses into the bound.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.canaries import canary_path
from client.outbox import Outbox
from common.config import RunConfig
from common.empirical import guess, one_run_epsilon
from common.errors import ConfigError
from common.ledger.entry import entry_hash
from common.ledger.provenance import fingerprint_arrays
from common.ledger.store import read_entries
from common.model import build_model, trainable_state
from server.app import resolve_labels
from server.checkpoint import checkpoint_path, load_checkpoint
from simulations.run import SimulationResources, simulate

HEAD_WEIGHT = "head.weight"
AUDITOR_FILE = "auditor.npz"  # every canary and whether it was included: the auditor's own


@dataclass(frozen=True)
class Canaries:
    """Every canary: its node (partition), input axis and sign, label, reference label,
    and whether it was included (a fair coin each)."""

    partition: np.ndarray
    column: np.ndarray
    sign: np.ndarray
    label: np.ndarray
    reference: np.ndarray
    included: np.ndarray

    def save(self, path: Path) -> None:
        np.savez(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})


def make_canaries(partitions: list[int], dim: int, num_labels: int, seed: int) -> Canaries:
    """Two canaries per input axis and node (one with fewer than three labels)."""
    if num_labels < 2:
        raise ConfigError("the empirical audit needs at least two labels")
    rng = np.random.default_rng(seed)
    rows = []
    for partition in partitions:
        for column in range(dim):
            labels = rng.permutation(num_labels)  # a, b, and the reference after them
            if num_labels == 2:
                rows.append((partition, column, 1, labels[0], labels[1]))
            else:
                rows.append((partition, column, 1, labels[0], labels[2]))
                rows.append((partition, column, -1, labels[1], labels[2]))
    p, c, s, lab, ref = (np.array(x) for x in zip(*rows, strict=True))
    return Canaries(p, c, s, lab, ref, included=rng.random(len(rows)) < 0.5)


def write_canary_files(canaries: Canaries, folder: Path, dim: int) -> None:
    """Each canary node's file: its included canaries only (the node never learns which
    were left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    for partition in np.unique(canaries.partition):
        mine = (canaries.partition == partition) & canaries.included
        features = np.zeros((int(mine.sum()), dim), dtype=np.float32)
        features[np.arange(len(features)), canaries.column[mine]] = canaries.sign[mine]
        np.savez(canary_path(folder, int(partition)), features=features,
                 labels=canaries.label[mine])


def head_movement(run_dir: Path, partition: int, initial: dict[str, np.ndarray],
                  num_rounds: int, received_hashes: set[str]) -> tuple[np.ndarray, list[int]]:
    """How node `partition`'s updates moved the head's weights, summed over the rounds the
    coordinator received (each checked against its ledger entry and starting model)."""
    outbox = Outbox(run_dir / "nodes" / f"client-{partition}" / "outbox")
    total, rounds = np.zeros_like(initial[HEAD_WEIGHT], dtype=np.float64), []
    for r in range(1, num_rounds + 1):
        sent = outbox.load("train", r)
        if sent is None or sent.arrays is None:
            continue  # a refused round, or a reply no longer kept
        if entry_hash(sent.entry) not in received_hashes:
            raise ConfigError(f"{run_dir}: node {partition}'s round {r} reply is not in the "
                              "ledger: not what the coordinator received")
        received = initial if r == 1 else load_checkpoint(checkpoint_path(run_dir, r - 1))
        if fingerprint_arrays(received[n] for n in sent.arrays) != sent.model_in:
            raise ConfigError(f"{run_dir}: node {partition}'s round {r} did not start from "
                              "the global model of the round before")
        total += sent.arrays[HEAD_WEIGHT].astype(np.float64) - received[HEAD_WEIGHT]
        rounds.append(r)
    return total, rounds


def scores(canaries: Canaries, movement: dict[int, np.ndarray]) -> np.ndarray:
    """sign x (dW[label, k] - dW[reference, k]) of each canary, from its node's movement."""
    out = np.empty(len(canaries.partition))
    for i, (p, k, s, a, ref) in enumerate(zip(canaries.partition, canaries.column,
                                               canaries.sign, canaries.label,
                                               canaries.reference, strict=True)):
        out[i] = s * (movement[int(p)][a, k] - movement[int(p)][ref, k])
    return out


def claimed(run_dir: Path, partitions: list[int]) -> tuple[float, float]:
    """The largest cumulative epsilon the canary nodes claim, and its delta."""
    finals = []
    for p in partitions:
        train = [e["record"] for e in read_entries(run_dir / "nodes" / f"client-{p}" /
                                                    "ledger.jsonl")
                 if e["record"]["kind"] == "train"]
        if train:
            finals.append((train[-1]["epsilon"], train[-1]["delta"]))
    if not finals:
        raise ConfigError(f"{run_dir}: no canary node trained: nothing to audit")
    return max(finals)


def audit_empirically(cfg: RunConfig, resources: SimulationResources, canary_clients: int,
                      out: Path, *, guess_fraction: float = 1.0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Run the federation with `canary_clients` canary nodes beside the real ones, and
    return the audit's row: claimed epsilon, empirical lower bound, guesses, seconds."""
    started = time.monotonic()
    if cfg.model.finetune != "head":
        raise ConfigError(f"invalid --finetune {cfg.model.finetune}: the empirical audit's "
                          "canaries are embeddings for the head (--finetune head)")
    if canary_clients < 1:
        raise ConfigError(f"invalid --canary-clients {canary_clients}: must be >= 1")
    cfg = resolve_labels(cfg)
    real = resources.num_clients
    partitions = list(range(real, real + canary_clients))
    model = build_model(cfg.model, cfg.data.label_names, cfg.train.seed)
    initial = trainable_state(model)
    dim = model.head.in_features
    canaries = make_canaries(partitions, dim, len(cfg.data.label_names), cfg.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_canary_files(canaries, out / "canaries", dim)
    canaries.save(out / AUDITOR_FILE)
    run_dir = simulate(cfg.replace(canaries=str((out / "canaries").resolve()),
                                   **{"run-dir": str(out / "run")}),
                       SimulationResources(num_clients=real + canary_clients,
                                           client_cpus=resources.client_cpus,
                                           client_gpus=resources.client_gpus,
                                           ray_address=resources.ray_address))
    hashes = {entry_hash(e) for e in read_entries(run_dir / "ledger.jsonl")}
    movement, observed = {}, set()
    for p in partitions:
        movement[p], rounds = head_movement(run_dir, p, initial, cfg.federation.num_rounds,
                                            hashes)
        observed.update(rounds)
    guesses = guess(scores(canaries, movement), canaries.included, guess_fraction)
    eps, delta = claimed(run_dir, partitions)
    bound = one_run_epsilon(guesses.canaries, guesses.guesses, guesses.correct, delta,
                            confidence)
    row = {"setting": f"epsilon {cfg.privacy.epsilon:g}" if cfg.privacy.dp else "noise off (no DP)",
           "claimed_epsilon": eps, "delta": delta, "epsilon_lower_bound": bound,
           "confidence": confidence, **guesses.to_dict(), "guess_fraction": guess_fraction,
           "canary_clients": canary_clients, "real_clients": real,
           "rounds_observed": sorted(observed), "run_dir": str(run_dir),
           "seconds": round(time.monotonic() - started, 1)}
    (out / "empirical.json").write_text(json.dumps(row, indent=2, default=str))
    return row
