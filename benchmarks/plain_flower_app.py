"""The baseline of benchmarks/bench_scale.py: the same local work in plain Flower.

A minimal ServerApp/ClientApp in the style of Flower's own Opacus example
(examples/opacus: a module-level data cache, a PrivacyEngine per message, epsilon from
its accountant): the same tiny model's head on the same partition's embeddings, the same
DP-SGD steps at the same noise, FedAvg on the server. No node files, ledger, outbox,
budget or plan: what it costs is Flower's engine plus Opacus, which fedpriv's overhead
is compared with. Settings come from the environment (BENCH_*), which Ray's workers
inherit on one machine; the ServerApp writes each round's end time to BENCH_OUT.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from common.config import RunConfig
from common.data import EMBEDDED_LABELS
from common.features import embeddings
from common.model import build_model, load_tokenizer
from common.partition import client_partition, partitioned, pool_and_held_out
from common.training import local_schedule, make_optimizer, train_steps

client_app, server_app = ClientApp(), ServerApp()


def settings() -> tuple[RunConfig, dict]:
    env = json.loads(os.environ["BENCH_SETTINGS"])
    return RunConfig().replace(**env["config"], labels=",".join(EMBEDDED_LABELS)), env


class CountingFedAvg(FedAvg):
    """FedAvg that counts each round's good replies: a baseline whose clients failed
    would look fast."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.good: list[int] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.good.append(sum(not msg.has_error() for msg in replies))
        return super().aggregate_train(server_round, replies)


@lru_cache(maxsize=1)
def _pool(num_partitions: int):
    cfg, _ = settings()
    pool, _ = pool_and_held_out(cfg.data, cfg.train.seed)
    return pool, partitioned(pool, cfg.data, num_partitions, cfg.train.seed)


@lru_cache(maxsize=4096)
def _partition(partition_id: int, num_partitions: int) -> TensorDataset:
    """A client's rows as embeddings, once per process (as Flower's examples cache data)."""
    cfg, _ = settings()
    pool, partitioner = _pool(num_partitions)
    rows = client_partition(pool, partitioner, partition_id, num_partitions)
    model = _model()
    vectors = embeddings(model, rows, load_tokenizer(cfg.model), cfg.model.max_length,
                         torch.device("cpu"), None)
    return TensorDataset(vectors, torch.tensor(rows.labels))


@lru_cache(maxsize=1)
def _model():
    cfg, _ = settings()
    return build_model(cfg.model, cfg.data.label_names, cfg.train.seed)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, env = settings()
    data = _partition(int(context.node_config["partition-id"]),
                      int(context.node_config["num-partitions"]))
    schedule = local_schedule(len(data), cfg.train)
    head = torch.nn.Linear(_model().head.in_features, len(cfg.data.label_names))
    head.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    engine = PrivacyEngine(accountant=cfg.privacy.accountant)
    module, optimizer, loader = engine.make_private(
        module=head, optimizer=make_optimizer(head, cfg.learning_rate),
        data_loader=DataLoader(data, batch_size=schedule.batch_size),
        noise_multiplier=env["sigma"], max_grad_norm=cfg.privacy.max_grad_norm,
        poisson_sampling=True)
    train_steps(module, optimizer, loader, schedule.steps_per_round, torch.device("cpu"))
    metrics = {"num-examples": len(data),
               "epsilon": engine.get_epsilon(delta=cfg.privacy.delta)}
    return Message(RecordDict({"arrays": ArrayRecord(head.state_dict()),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, env = settings()
    fed = cfg.federation
    head = torch.nn.Linear(_model().head.in_features, len(cfg.data.label_names))
    strategy = CountingFedAvg(fraction_train=fed.fraction_train, fraction_evaluate=0.0,
                      min_train_nodes=1, min_available_nodes=env["num_clients"])
    ends = [time.monotonic()]

    def round_ended(server_round: int, arrays: ArrayRecord) -> None:
        if server_round:
            ends.append(time.monotonic())

    strategy.start(grid=grid, initial_arrays=ArrayRecord(head.state_dict()),
                   num_rounds=fed.num_rounds, evaluate_fn=round_ended)
    with open(env["out"], "w") as fh:
        json.dump({"round_ends": ends, "good_replies": strategy.good}, fh)
