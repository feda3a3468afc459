"""The steps that set a federation up: where it starts (new or resumed), its model, its strategy.

`server.app.run_federation` calls these in order; each is one decision a reader can
check on its own.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from common.config import RunConfig
from common.errors import ConfigError
from common.files import write_atomic
from common.model import build_model, load_trainable_state, trainable_state
from server.admission import ledger_keys
from server.checkpoint import latest_good_checkpoint
from server.ledger import Ledger
from server.outcome import RoundObserver
from server.rundir import RUN_FILE, saved_run
from server.strategy import PrivacyStrategy, flower_strategy, update_problem

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


def starting_model(cfg: RunConfig, state: RunState, run_dir: Path) -> nn.Module:
    """The model built from the config, with a resumed run's checkpoint loaded into it.

    ConfigError if the checkpoint does not fit (e.g. the run was resumed with another
    model): loading it partly would go on from a model nobody trained.
    """
    model = build_model(cfg.model, cfg.data.label_names, cfg.train.seed)
    if state.arrays is not None:
        problem = update_problem(state.arrays, trainable_state(model), math.inf)
        if problem:
            raise ConfigError(f"cannot resume {run_dir}: its checkpoint does not fit the "
                              f"model ({problem})")
        load_trainable_state(model, state.arrays)
    return model


def build_strategy(cfg: RunConfig, state: RunState, heads: Mapping[int, str],
                   observers: Sequence[RoundObserver]) -> PrivacyStrategy:
    """Our strategy around the Flower aggregation the config names.

    Evaluation samples as many nodes as training needs at least, and the federation waits
    for at least that many nodes to connect, whatever --min-available-clients says.
    """
    fed = cfg.federation
    inner = flower_strategy(
        fed.aggregation, fed.trim_fraction,
        fraction_train=fed.fraction_train, fraction_evaluate=fed.fraction_evaluate,
        min_train_nodes=fed.min_train_clients, min_evaluate_nodes=fed.min_train_clients,
        min_available_nodes=max(fed.min_available_clients, fed.min_train_clients))
    return PrivacyStrategy(inner, heads=heads, ledger_run=state.ledger_run,
                           learning_rate=cfg.learning_rate,
                           first_round=state.completed_rounds + 1,
                           min_updates=fed.min_updates, observers=observers,
                           ledger_keys=ledger_keys(fed.ledger_keys))
