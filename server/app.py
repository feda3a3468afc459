"""The Flower ServerApp: coordinates rounds, aggregates, keeps the ledger and checkpoints.

Simulation (`fedpriv simulate`) and deployment (`flwr run` against a SuperLink) run
this same app.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from common.config import RunConfig
from common.data import EMBEDDED_LABELS, encode, load_labelled_texts
from common.errors import ConfigError
from common.model import (
    build_model,
    export_pretrained,
    load_tokenizer,
    load_trainable_state,
    pick_device,
    trainable_state,
)
from common.partition import simulation_split
from common.training import evaluate
from common.weights import from_record, to_record
from server.ledger import Ledger
from server.report import RoundReporter
from server.strategy import PrivacyFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, RunConfig.from_flat(dict(context.run_config)))


def resolve_labels(cfg: RunConfig) -> RunConfig:
    """Fix the label set once, on the server, so every node builds the same head."""
    if cfg.data.label_names:
        return cfg
    if not cfg.data.data_path:
        return cfg.replace(labels=",".join(EMBEDDED_LABELS))
    return cfg.replace(labels=",".join(load_labelled_texts(cfg.data).label_names))


def check_run_dir(cfg: RunConfig) -> Path:
    """The run directory, refused if it already holds a run: a ledger is never overwritten."""
    run_dir = Path(cfg.federation.run_dir)
    if (run_dir / "ledger.jsonl").exists():
        raise ConfigError(f"invalid --run-dir {run_dir}: it already holds a run "
                          "(its ledger is kept); choose another --run-dir")
    return run_dir


def run_federation(grid: Grid, cfg: RunConfig, console: Console | None = None) -> Path:
    """Run all rounds; returns the run directory with ledger, metrics and final model."""
    cfg = resolve_labels(cfg)
    run_dir = check_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = cfg.data.label_names
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, labels, cfg.train.seed)
    device = pick_device(cfg.train.device)

    fed = cfg.federation
    strategy = PrivacyFedAvg(
        ledger=Ledger(run_dir / "ledger.jsonl"), run_dir=run_dir,
        fraction_train=fed.fraction_train, fraction_evaluate=fed.fraction_evaluate,
        min_train_nodes=fed.min_train_clients, min_evaluate_nodes=fed.min_train_clients,
        min_available_nodes=max(fed.min_available_clients, fed.min_train_clients))
    reporter = RoundReporter(run_dir, strategy, fed.num_rounds, cfg.to_flat(), console)

    test_set = None
    if fed.central_eval:
        _, held_out = simulation_split(cfg.data, cfg.train.seed)
        test_set = encode(held_out, tokenizer, cfg.model.max_length)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        central = None
        if test_set is not None:
            load_trainable_state(model, from_record(arrays))
            loss, accuracy = evaluate(model.to(device), test_set, cfg.train.batch_size, device)
            central = {"loss": loss, "accuracy": accuracy}
        reporter.end_round(server_round, central)
        return MetricRecord(central) if central else None

    initial = to_record(trainable_state(model))
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=fed.num_rounds, timeout=fed.round_timeout,
        train_config=ConfigRecord(cfg.to_flat()), evaluate_config=ConfigRecord(cfg.to_flat()),
        evaluate_fn=evaluate_fn)

    # No round aggregated anything (e.g. every node refused): the model stays as it began.
    final = result.arrays if len(result.arrays) else initial
    load_trainable_state(model, from_record(final))
    export_pretrained(model.to(torch.device("cpu")), tokenizer, run_dir / "final_model")
    reporter.console.print(reporter.summary_table())
    return run_dir
