"""The Flower ServerApp: coordinates rounds, aggregates, keeps the ledger and checkpoints.

Simulation (`fedpriv simulate`) and deployment (`flwr run` against a SuperLink) run
this same app.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from common.config import RunConfig
from common.data import EMBEDDED_LABELS, encode, load_labelled_texts
from common.errors import ConfigError
from common.files import write_atomic
from common.model import (
    build_model,
    export_pretrained,
    load_tokenizer,
    load_trainable_state,
    pick_device,
    trainable_state,
)
from common.partition import pool_and_held_out
from common.training import evaluate
from common.wire import from_record, to_record
from server.checkpoint import latest_good_checkpoint
from server.ledger import Ledger
from server.report import RoundReporter
from server.rundir import RUN_FILE, check_run_dir, saved_run
from server.strategy import make_strategy, update_problem

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(dict(context.run_config))
    run_federation(grid, cfg, flower_run=context.run_id)


def resolve_labels(cfg: RunConfig) -> RunConfig:
    """Fix the label set once, on the server, so every node builds the same head."""
    if cfg.data.label_names:
        return cfg
    if not cfg.data.data_path:
        return cfg.replace(labels=",".join(EMBEDDED_LABELS))
    return cfg.replace(labels=",".join(load_labelled_texts(cfg.data).label_names))


log = logging.getLogger("fedpriv.server")


@dataclass(frozen=True)
class RunState:
    """Where a run starts: round 0 and the built model, or a resumed run's checkpoint.

    `completed_rounds` are not asked again. Normally that is the checkpoint's round: the
    next round is repeated, and nodes that had answered it send the same signed reply
    again. If the ledger holds later rounds (their checkpoints are damaged), those are
    over too: their spend is recorded, and asking again would mean training them twice.
    """

    ledger_run: int
    completed_rounds: int
    arrays: dict[str, np.ndarray] | None


def start_state(cfg: RunConfig, run_dir: Path, ledger: Ledger, flower_run: int) -> RunState:
    """A new run writes run.json; a resumed one loads its newest good checkpoint."""
    if not cfg.federation.resume:
        saved = {"ledger_run": flower_run, "config": cfg.replace(resume=False).to_flat()}
        write_atomic(run_dir / RUN_FILE, json.dumps(saved, indent=1).encode(), replace=False)
        return RunState(ledger_run=flower_run, completed_rounds=0, arrays=None)
    ledger_run = int(saved_run(run_dir)["ledger_run"])
    checkpoint, arrays = latest_good_checkpoint(run_dir)
    trained = [r.round for r in ledger.records() if r.run_id == ledger_run]
    completed = checkpoint
    if max(trained, default=0) > checkpoint + 1:
        completed = max(trained)
        log.warning("rounds %d to %d are in the ledger but their model is lost (damaged "
                    "checkpoints): going on at round %d from the model of round %d",
                    checkpoint + 1, completed, completed + 1, checkpoint)
    return RunState(ledger_run=ledger_run, completed_rounds=completed, arrays=arrays)


def run_federation(grid: Grid, cfg: RunConfig, console: Console | None = None,
                   flower_run: int = 0) -> Path:
    """Run all rounds; returns the run directory with ledger, metrics and final model."""
    cfg = resolve_labels(cfg)
    run_dir = check_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Opening the ledger also sets aside a line cut off by a kill.
    ledger = Ledger(run_dir / "ledger.jsonl")
    state = start_state(cfg, run_dir, ledger, flower_run)
    labels = cfg.data.label_names
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, labels, cfg.train.seed)
    device = pick_device(cfg.train.device)
    if state.arrays is not None:
        problem = update_problem(state.arrays, trainable_state(model), math.inf)
        if problem:
            raise ConfigError(f"cannot resume {run_dir}: its checkpoint does not fit the "
                              f"model ({problem})")
        load_trainable_state(model, state.arrays)

    fed = cfg.federation
    done = state.completed_rounds
    strategy = make_strategy(
        fed.aggregation, fed.trim_fraction, ledger=ledger,
        run_dir=run_dir, ledger_run=state.ledger_run, learning_rate=cfg.train.learning_rate,
        first_round=done + 1, min_updates=fed.min_updates,
        fraction_train=fed.fraction_train, fraction_evaluate=fed.fraction_evaluate,
        min_train_nodes=fed.min_train_clients, min_evaluate_nodes=fed.min_train_clients,
        min_available_nodes=max(fed.min_available_clients, fed.min_train_clients))
    reporter = RoundReporter(run_dir, strategy, fed.num_rounds, cfg.to_flat(), console,
                             up_to=(done or -1) if fed.resume else None)
    if fed.resume:
        reporter.console.print(f"resuming {run_dir} after round {done} of {fed.num_rounds} "
                               f"(ledger run {state.ledger_run})")

    test_set = None
    if fed.central_eval:
        _, held_out = pool_and_held_out(cfg.data, cfg.train.seed)
        test_set = encode(held_out, tokenizer, cfg.model.max_length)

    def evaluate_fn(count: int, arrays: ArrayRecord) -> MetricRecord | None:
        if count == 0 and done:
            return None  # the resumed model was evaluated when its round ended
        server_round = strategy.round_of(count) if count else 0
        central = None
        if test_set is not None:
            load_trainable_state(model, from_record(arrays))
            loss, accuracy = evaluate(model.to(device), test_set, cfg.train.batch_size, device)
            central = {"loss": loss, "accuracy": accuracy}
        reporter.end_round(server_round, central)
        return MetricRecord(central) if central else None

    initial = to_record(trainable_state(model))
    final = initial
    if done < fed.num_rounds:
        result = strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=fed.num_rounds - done,
            timeout=fed.round_timeout, train_config=ConfigRecord(cfg.to_flat()),
            evaluate_config=ConfigRecord(cfg.to_flat()), evaluate_fn=evaluate_fn)
        # No round aggregated anything (e.g. every node refused): the model stays as it was.
        final = result.arrays if len(result.arrays) else initial
    load_trainable_state(model, from_record(final))
    export_pretrained(model.to(torch.device("cpu")), tokenizer, run_dir / "final_model")
    reporter.console.print(reporter.summary_table())
    return run_dir
