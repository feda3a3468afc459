"""Splitting one labelled set into simulated clients with `flwr-datasets` partitioners."""

from __future__ import annotations

import random

from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
)

from common.config import DataConfig
from common.data import LabelledTexts, load_labelled_texts, split, subsample
from common.errors import ConfigError


def make_partitioner(cfg: DataConfig, num_partitions: int, seed: int) -> Partitioner:
    if cfg.partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if cfg.partitioner == "dirichlet":
        # min_partition_size=1: Dirichlet resamples until every client has data.
        return DirichletPartitioner(num_partitions=num_partitions, partition_by="label",
                                    alpha=cfg.dirichlet_alpha, min_partition_size=1,
                                    self_balancing=False, seed=seed)
    return PathologicalPartitioner(num_partitions=num_partitions, partition_by="label",
                                   num_classes_per_partition=cfg.classes_per_client,
                                   class_assignment_mode="deterministic", seed=seed)


def pool_and_held_out(cfg: DataConfig, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """(pool the simulated clients share, held-out set the server evaluates on).

    The deployed server uses the held-out half too, for its central evaluation on data
    of its own (the embedded set by default), never a partner's.
    """
    data = subsample(load_labelled_texts(cfg), cfg.max_examples, seed)
    return split(data, cfg.test_fraction, seed)


def partitioned(pool: LabelledTexts, cfg: DataConfig, num_partitions: int,
                seed: int) -> Partitioner:
    """The partitioner of `pool`, holding the pool's rows in a seeded random order.

    Flower's IidPartitioner takes contiguous shards (FederatedDataset shuffles first), and
    a data file is often sorted (the embedded one by label): unshuffled, "iid" clients
    would each hold one or two labels.
    """
    if cfg.partitioner == "label" and cfg.classes_per_client > len(pool.label_names):
        raise ConfigError(f"invalid --classes-per-client {cfg.classes_per_client}: "
                          f"the data has only {len(pool.label_names)} labels")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    partitioner = make_partitioner(cfg, num_partitions, seed)
    partitioner.dataset = Dataset.from_dict({"row": order,
                                             "label": [pool.labels[i] for i in order]})
    return partitioner


def client_partition(pool: LabelledTexts, partitioner: Partitioner, partition_id: int,
                     num_partitions: int) -> LabelledTexts:
    """The rows simulated client `partition_id` holds (`partitioner` from `partitioned`,
    seeded: the same on every process)."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} outside 0..{num_partitions - 1}")
    rows = partitioner.load_partition(partition_id)["row"]
    return pool.subset(sorted(rows))
