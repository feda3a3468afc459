"""What a node decides for itself: its data, its privacy budget, and its spend so far.

The coordinator proposes a training plan (the run config in each message); the node's
own settings (`--node-config` of the SuperNode, i.e. `context.node_config`) win over it
for everything that is the node's to decide. In particular the coordinator can lower a
node's epsilon but never raise it above the node's `max-epsilon`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context

from common.config import RunConfig
from common.data import LabelledTexts, load_labelled_texts, split
from common.errors import ConfigError
from common.partition import client_partition, simulation_split
from common.privacy import History, PrivacyPlan

# Node-config keys a partner sets when starting its SuperNode.
DATA_KEYS = ("data-path", "text-column", "label-column", "encoding")
MAX_EPSILON_KEY, DELTA_KEY = "max-epsilon", "delta"
# Share of a node's rows held out for federated evaluation, never trained on.
LOCAL_EVAL_FRACTION = 0.1
STATE_KEY = "fedpriv-privacy-state"


@dataclass(frozen=True)
class NodeBudget:
    epsilon: float
    delta: float
    # True when the node itself declared a budget (deployment): it then also refuses
    # any round that would train without DP.
    declared: bool


def budget_of(cfg: RunConfig, node_config: dict) -> NodeBudget:
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
    """A stable small id for seeding: the partition in simulation, else the node id."""
    return int(context.node_config.get("partition-id", context.node_id))


def local_data(cfg: RunConfig, node_config: dict) -> tuple[LabelledTexts, LabelledTexts]:
    """(train, eval) rows of this node.

    A deployed node reads its own file (node-config `data-path`). Only a simulated node
    (node-config carries `partition-id`) takes its rows from the run config, as a
    partition of the researcher's data set: a coordinator never chooses a partner's data.
    """
    if "data-path" in node_config:
        overrides = {k: node_config[k] for k in DATA_KEYS if k in node_config}
        data = load_labelled_texts(cfg.replace(**overrides).data)
    elif "partition-id" in node_config:
        pool, _ = simulation_split(cfg.data, cfg.train.seed)
        data = client_partition(pool, cfg.data, int(node_config["partition-id"]),
                                int(node_config["num-partitions"]), cfg.train.seed)
    else:
        raise ConfigError("this node has no data: start it with "
                          "--node-config \"data-path='/path/to/data.csv'\"")
    return split(data, LOCAL_EVAL_FRACTION, cfg.train.seed)


@dataclass
class PrivacyState:
    """The node's plan and accountant history, kept across rounds in the node's context."""

    plan: PrivacyPlan | None
    history: History

    @classmethod
    def load(cls, context: Context) -> PrivacyState:
        if STATE_KEY not in context.state.config_records:
            return cls(plan=None, history=[])
        saved = json.loads(str(context.state.config_records[STATE_KEY]["json"]))
        plan = PrivacyPlan(**saved["plan"]) if saved["plan"] else None
        return cls(plan=plan, history=[tuple(h) for h in saved["history"]])

    def save(self, context: Context) -> None:
        payload = {"plan": self.plan.to_dict() if self.plan else None, "history": self.history}
        context.state.config_records[STATE_KEY] = ConfigRecord({"json": json.dumps(payload)})
