"""The Flower ServerApp: coordinates rounds, aggregates, keeps the ledger and checkpoints.

Simulation (`fedpriv simulate`) and deployment (`flwr run` against a SuperLink) run
this same app.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from common.config import RunConfig
from common.data import EMBEDDED_LABELS, load_labelled_texts
from common.export import export_model
from common.features import features
from common.model import (
    TextClassifier,
    load_tokenizer,
    load_trainable_state,
    pick_device,
    trainable_state,
)
from common.partition import pool_and_held_out
from common.training import EVAL_BATCH, evaluate
from common.wire import from_record, to_record
from server.attestation import collect_attestations
from server.checkpoint import CheckpointWriter
from server.federation import RunState, build_strategy, start_state, starting_model
from server.grid import PromptGrid
from server.ledger import Ledger
from server.report import RoundReporter
from server.rundir import check_run_dir
from server.strategy import PrivacyStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(dict(context.run_config))
    run_federation(PromptGrid(grid), cfg, flower_run=context.run_id)


def resolve_labels(cfg: RunConfig) -> RunConfig:
    """Fix the label set once, on the server, so every node builds the same head."""
    if cfg.data.label_names:
        return cfg
    if not cfg.data.data_path:
        return cfg.replace(labels=",".join(EMBEDDED_LABELS))
    return cfg.replace(labels=",".join(load_labelled_texts(cfg.data).label_names))


def run_federation(grid: Grid, cfg: RunConfig, console: Console | None = None,
                   flower_run: int = 0) -> Path:
    """Run all rounds; returns the run directory with ledger, metrics and final model."""
    cfg = resolve_labels(cfg)
    run_dir = check_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Opening the ledger also sets aside a line cut off by a kill.
    ledger = Ledger(run_dir / "ledger.jsonl")
    state = start_state(cfg, run_dir, ledger, flower_run)
    model = starting_model(cfg, state, run_dir)
    tokenizer = load_tokenizer(cfg.model)
    reporter = start_report(cfg, run_dir, state, console)
    # The ledger first: a round's spend is on disk before its checkpoint ends the round
    # (a resumed run goes on after it); the report last, from what is kept.
    strategy = build_strategy(cfg, state, MappingProxyType(ledger.heads),
                              observers=[ledger, CheckpointWriter(run_dir), reporter])
    evaluate_fn = central_evaluation(cfg, model, tokenizer, strategy, reporter,
                                     resumed=state.completed_rounds > 0)
    final = run_rounds(grid, cfg, strategy, to_record(trainable_state(model)), evaluate_fn)
    # Every node closes the run with a signed attestation: the ledger is then complete.
    attestations = collect_attestations(grid, cfg, ledger, state.ledger_run,
                                        cfg.federation.num_rounds)
    reporter.console.print(attestations.summary(), highlight=False)
    load_trainable_state(model, from_record(final))
    export_model(model, tokenizer, cfg.model.max_length, run_dir / "final_model")
    reporter.console.print(reporter.summary_table())
    return run_dir


def start_report(cfg: RunConfig, run_dir: Path, state: RunState,
                 console: Console | None) -> RoundReporter:
    """The round reporter; a resumed run keeps the rows up to where it goes on."""
    fed = cfg.federation
    done = state.completed_rounds
    reporter = RoundReporter(run_dir, fed.num_rounds, cfg.to_flat(), console,
                             up_to=(done or -1) if fed.resume else None)
    if fed.resume:
        reporter.console.print(f"resuming {run_dir} after round {done} of {fed.num_rounds} "
                               f"(ledger run {state.ledger_run})")
    return reporter


def central_evaluation(cfg: RunConfig, model: TextClassifier, tokenizer: object,
                       strategy: PrivacyStrategy, reporter: RoundReporter, resumed: bool
                       ) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Flower's `evaluate_fn`: the held-out evaluation (if enabled), then the round's row.

    Flower calls it after every round (and with count 0 before the first), so it is
    where each round ends.
    """
    device = pick_device(cfg.train.device)
    test_set = None
    if cfg.federation.central_eval:
        # Embedded once (head mode) or tokenised once: every round reuses it.
        _, held_out = pool_and_held_out(cfg.data, cfg.train.seed)
        test_set = features(model, held_out, tokenizer, cfg.model, device)

    def evaluate_fn(count: int, arrays: ArrayRecord) -> MetricRecord | None:
        if count == 0 and resumed:
            return None  # the resumed model was evaluated when its round ended
        server_round = strategy.round_of(count) if count else 0
        central = None
        if test_set is not None:
            load_trainable_state(model, from_record(arrays))
            loss, accuracy = evaluate(test_set.module.to(device),
                                      test_set.loader(EVAL_BATCH), device)
            central = {"loss": loss, "accuracy": accuracy}
        reporter.end_round(server_round, central)
        return MetricRecord(central) if central else None

    return evaluate_fn


def run_rounds(grid: Grid, cfg: RunConfig, strategy: PrivacyStrategy, initial: ArrayRecord,
               evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None]) -> ArrayRecord:
    """Flower's rounds from the strategy's first round to the last; the final weights."""
    fed = cfg.federation
    remaining = fed.num_rounds - strategy.first_round + 1
    if remaining <= 0:
        return initial
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=remaining,
        timeout=fed.round_timeout, train_config=ConfigRecord(cfg.to_flat()),
        evaluate_config=ConfigRecord(cfg.to_flat()), evaluate_fn=evaluate_fn)
    # No round aggregated anything (e.g. every node refused): the model stays as it was.
    return result.arrays if len(result.arrays) else initial
