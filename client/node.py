"""What a node decides for itself: its data, its privacy budget, and its spend so far.

The coordinator proposes a training plan (the run config in each message); the node's
own settings (`--node-config` of the SuperNode, i.e. `context.node_config`) win over it
for everything that is the node's to decide. In particular the coordinator can lower a
node's epsilon but never raise it above the node's `max-epsilon`.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context

from client import cache
from common import privacy
from common.config import RunConfig
from common.data import LabelledTexts
from common.errors import ConfigError
from common.files import write_atomic
from common.ledger.keys import create_signing_key, load_private_key
from common.ledger.record import PrivacyRecord
from common.privacy import History, PrivacyPlan

# Node-config keys a partner sets when starting its SuperNode.
DATA_KEYS = ("data-path", "text-column", "label-column", "encoding")
MAX_EPSILON_KEY, DELTA_KEY = "max-epsilon", "delta"
# Share of a node's rows held out for federated evaluation, never trained on.
LOCAL_EVAL_FRACTION = 0.1
STATE_DIR_KEY = "state-dir"
# The ledger signing key the partner made with its node key (`fedpriv certs node`) and
# whose public half the coordinator admitted; without it, one kept in the state dir.
LEDGER_KEY_KEY = "ledger-key"


@dataclass(frozen=True)
class NodeBudget:
    """The (epsilon, delta) this node accepts to spend over all its training."""

    epsilon: float
    delta: float
    # True when the node itself declared a budget (deployment): it then also refuses
    # any round that would train without DP.
    declared: bool


def budget_of(cfg: RunConfig, node_config: dict) -> NodeBudget:
    """The coordinator's (epsilon, delta), lowered to the node's own where it set them.

    The node's settings only ever lower the budget, never raise it.
    """
    epsilon, delta = cfg.privacy.epsilon, cfg.privacy.delta
    declared = MAX_EPSILON_KEY in node_config
    if declared:
        node_eps = _positive(node_config, MAX_EPSILON_KEY)
        epsilon = min(epsilon, node_eps)
    if DELTA_KEY in node_config:
        delta = min(delta, _positive(node_config, DELTA_KEY))
    return NodeBudget(epsilon=epsilon, delta=delta, declared=declared)


def _positive(node_config: dict, key: str) -> float:
    try:
        value = float(node_config[key])
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"invalid node-config {key}={node_config[key]!r}: must be a number > 0")
    return value


def node_index(context: Context) -> int:
    """A stable small id for seeding: the partition in simulation, else the node id.

    Deployed node ids are random 64-bit numbers; reduced so seeds stay in torch's range.
    """
    return int(context.node_config.get("partition-id", context.node_id % 2**31))


def local_data(cfg: RunConfig, node_config: dict) -> tuple[LabelledTexts, LabelledTexts]:
    """(train, eval) rows of this node, loaded once per process (client.cache).

    A deployed node reads its own file (node-config `data-path`). Only a simulated node
    (node-config carries `partition-id`) takes its rows from the run config, as a
    partition of the researcher's data set: a coordinator never chooses a partner's data.
    """
    if "data-path" in node_config:
        overrides = {k: node_config[k] for k in DATA_KEYS if k in node_config}
        return cache.node_rows(cfg.replace(**overrides).data, cfg.train.seed,
                               LOCAL_EVAL_FRACTION, None)
    if "partition-id" in node_config:
        partition = (int(node_config["partition-id"]), int(node_config["num-partitions"]))
        return cache.node_rows(cfg.data, cfg.train.seed, LOCAL_EVAL_FRACTION, partition)
    raise ConfigError("this node has no data: start it with "
                      "--node-config \"data-path='/path/to/data.csv'\"")


class NodeFiles:
    """A node's own files: signing key, ledger, privacy state, data-commitment salt,
    its optimizer's moments.

    Kept on disk in the node's state dir (never sent anywhere but the ledger entries),
    so a restarted node remembers what it spent and goes on with the same chain.
    """

    def __init__(self, directory: Path, ledger_key: Path | None = None) -> None:
        self.directory = directory
        self.ledger = directory / "ledger.jsonl"
        self.given_key = ledger_key is not None
        self.key = ledger_key or directory / "signing.key"
        self.public_key = self.key.with_suffix(".pub")
        self.state = directory / "privacy-state.json"
        self.salt = directory / "data-salt"
        self.moments = directory / "adamw-moments.pt"  # client/moments.py

    @classmethod
    def of(cls, cfg: RunConfig, context: Context) -> NodeFiles:
        """Where the node's files live.

        Node-config `state-dir` when set; a simulated node's folder in the run dir;
        else ~/.fedpriv/node.
        """
        node_config = context.node_config
        if STATE_DIR_KEY in node_config:
            key = node_config.get(LEDGER_KEY_KEY)
            return cls(Path(str(node_config[STATE_DIR_KEY])).expanduser(),
                       Path(str(key)).expanduser() if key else None)
        if "partition-id" in node_config:  # a simulated node keeps its files in the run dir
            return cls(Path(cfg.federation.run_dir) / "nodes"
                       / f"client-{node_config['partition-id']}")
        return cls(Path.home() / ".fedpriv" / "node")

    def signing_key(self) -> Ed25519PrivateKey:
        """The key the node signs its ledger with: the one it was given, or one kept in
        its state dir, created (with its public half) on first use."""
        if not self.key.exists() and not self.given_key:
            return create_signing_key(self.key, self.public_key)
        return load_private_key(self.key)

    def data_salt(self) -> bytes:
        """The secret salt of the node's data commitment, created once and never replaced.

        Salted, the commitment cannot be checked against guessed data by anyone else.
        """
        if not self.salt.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.salt, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        return self.salt.read_bytes()


@dataclass
class PrivacyState:
    """The node's plan and accountant phases per run.

    The budget covers every run on this state dir: a coordinator cannot reset a node's
    spend by starting a new run.
    """

    runs: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PrivacyState:
        """The state saved at `path`, empty for a new node; a corrupt one is never reset."""
        if not path.exists():
            return cls()
        try:
            return cls(runs=json.loads(path.read_text())["runs"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}: node privacy state is corrupt; restore it from a "
                              "backup (the node will not train without knowing its spend)"
                              ) from None

    def save(self, path: Path) -> None:
        """Write atomically: a crash mid-write leaves the previous spend, not a torn file."""
        write_atomic(path, json.dumps({"runs": self.runs}, indent=1).encode(), mode=0o600)

    def plan(self, run_id: int) -> PrivacyPlan | None:
        """The plan fixed on the run's first round, or None before it."""
        saved = self.runs.get(str(run_id), {}).get("plan")
        return PrivacyPlan(**saved) if saved else None

    def set_plan(self, run_id: int, plan: PrivacyPlan) -> None:
        """Store the run's plan (done once, on its first round)."""
        self.runs.setdefault(str(run_id), {"history": []})["plan"] = plan.to_dict()

    def run_history(self, run_id: int) -> History:
        """The phases of one run (the record's total_steps counts those)."""
        return [tuple(h) for h in self.runs.get(str(run_id), {}).get("history", [])]

    def history(self) -> History:
        """All phases of all runs, in order: what the accountant composes."""
        return [tuple(h) for run in self.runs.values() for h in run.get("history", [])]

    def record(self, run_id: int, server_round: int, node_id: int, kind: str,
               budget: NodeBudget, **fields: object) -> PrivacyRecord:
        """The node's record of `kind` for a round: the run's plan and its spend so far.

        Its epsilon is cumulative over every run on this state dir (what the budget
        bounds); before the run's plan exists nothing of the run is spent.
        """
        p = self.plan(run_id)
        base = dict(run_id=run_id, round=server_round, node_id=node_id, kind=kind,
                    mechanism="none", accountant="", noise_multiplier=0.0, sample_rate=0.0,
                    steps=0, total_steps=sum(n for *_, n in self.run_history(run_id)),
                    max_grad_norm=0.0, delta=budget.delta, epsilon=0.0,
                    epsilon_budget=budget.epsilon)
        if p is not None:
            base.update(mechanism=privacy.MECHANISM, accountant=p.accountant,
                        noise_multiplier=p.noise_multiplier, sample_rate=p.sample_rate,
                        max_grad_norm=p.max_grad_norm,
                        epsilon=privacy.epsilon(self.history(), p.delta, p.accountant))
        return PrivacyRecord(**{**base, **fields})

    def add_steps(self, run_id: int, sigma: float, q: float, steps: int) -> None:
        """Count `steps` more steps at (sigma, q), merged into the last phase as Opacus does."""
        history = self.runs.setdefault(str(run_id), {"history": []})["history"]
        if history and history[-1][:2] == [sigma, q]:
            history[-1][2] += steps
        else:
            history.append([sigma, q, steps])
