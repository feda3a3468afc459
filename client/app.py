"""The Flower ClientApp: one node's private local training and evaluation.

Simulation (`fedpriv simulate`) and deployment (SuperNode) run this same app.
Every reply carries a privacy record, signed and chained into the node's own ledger
(common.ledger) before it is sent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import cached_property
from typing import Protocol

import numpy as np
import opacus
import torch
from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from client import cache, moments
from client.attestation import attest, closed_run
from client.canaries import canary_features
from client.node import NodeFiles, PrivacyState, budget_of, local_data, node_index
from client.outbox import Outbox, Outgoing
from client.request import Request
from common import privacy
from common.data import LabelledTexts
from common.features import Features, features
from common.ledger.provenance import data_commitment, fingerprint_arrays, make_extra
from common.ledger.record import PrivacyRecord
from common.model import TextClassifier, load_trainable_state, pick_device, trainable_state
from common.training import (
    EVAL_BATCH,
    LocalSchedule,
    TrainOutcome,
    evaluate,
    local_schedule,
    make_optimizer,
    train_steps,
)
from common.wire import entry_recorddict, from_record, to_record

app = ClientApp()
log = logging.getLogger("fedpriv.client")


class NodeRound:
    """What one message asks of this node, with the node's own files, budget and data."""

    def __init__(self, msg: Message, context: Context, kind: str) -> None:
        """What every answer needs, replayed or not; data and model wait until asked for."""
        self.started_at = time.time()
        self.kind = kind
        request = Request.of(msg, context)
        self.server_round, self.run_id = request.server_round, request.run_id
        self.ledger_head, self.cfg = request.ledger_head, request.cfg
        self.msg, self.context = msg, context
        self.budget = budget_of(self.cfg, context.node_config)
        self.files = NodeFiles.of(self.cfg, context)
        self.outbox = Outbox(self.files.directory / "outbox")
        self.state = PrivacyState.load(self.files.state)
        self.received = from_record(msg.content["arrays"])
        self.model_in = fingerprint_arrays(self.received.values())
        self.ledger = cache.node_ledger(self.files.ledger, self.files.signing_key())
        self.device = pick_device(self.cfg.train.device)

    @cached_property
    def rows(self) -> tuple[LabelledTexts, LabelledTexts]:
        """(train, eval) rows of this node."""
        return local_data(self.cfg, self.context.node_config)

    @property
    def train_rows(self) -> LabelledTexts:
        return self.rows[0]

    @property
    def eval_rows(self) -> LabelledTexts:
        return self.rows[1]

    @cached_property
    def model(self) -> TextClassifier:
        """The model with the weights the message carries, on this node's device."""
        model = cache.fresh_model(self.cfg.model, self.train_rows.label_names,
                                  self.cfg.train.seed)
        load_trainable_state(model, self.received)
        return model.to(self.device)

    def features(self, rows: LabelledTexts) -> Features:
        """What the model trains or evaluates on for `rows`; a frozen encoder's embeddings
        come from the node's own cache after the first time."""
        cfg = self.cfg
        embedded = cache.embedding_cache(self.files.directory / "embeddings", cfg.model,
                                         self.train_rows.label_names, cfg.train.seed)
        return features(self.model, rows, cache.tokenizer(cfg.model), cfg.model, self.device,
                        embedded)

    def seed(self) -> int:
        """Torch's seed for this node and round: reproducible runs, distinct draws."""
        index = node_index(self.context)
        return self.cfg.train.seed * 1_000_003 + index * 1_009 + self.server_round

    def record(self, kind: str, **fields: object) -> PrivacyRecord:
        """This node's record for the round, from its plan and accountant history."""
        return self.state.record(self.run_id, self.server_round, self.context.node_id, kind,
                                 self.budget, **fields)

    def reply(self, record: PrivacyRecord, metrics: dict[str, float] | None = None,
              sent: dict[str, np.ndarray] | None = None) -> Message:
        """Sign the record into the node's ledger and answer with it.

        The signed reply goes to the outbox before the ledger: a node killed in between
        finds it there and sends that same reply again, never a second record for the round.
        """
        # Everything in the MetricRecord leaves the node without DP: the record names it.
        if metrics:
            record = replace(record, disclosed=dict(metrics))
        extra = make_extra(
            model_in=self.model_in,
            model_out=fingerprint_arrays(sent.values()) if sent else None,
            data=data_commitment(self.train_rows.digest, self.files.data_salt()),
            accountant_settings={"opacus": opacus.__version__},
            started_at=self.started_at, finished_at=time.time())
        reply = Outgoing(run_id=self.run_id, round=self.server_round, kind=self.kind,
                         model_in=self.model_in, entry=self.ledger.sign(record, extra),
                         metrics=metrics or {}, arrays=sent)
        self.outbox.save(reply)
        self.ledger.commit(reply.entry)
        return self.message(reply)

    def replay(self) -> Message | None:
        """The reply already signed for this very request (same run, round and model).

        A request for a round this node answered but can no longer answer the same way
        (another model, or the stored reply is gone) is refused: one round, one spend.
        """
        sent = self.outbox.load(self.kind, self.server_round)
        if sent is not None and (sent.run_id, sent.model_in) == (self.run_id, self.model_in):
            self.ledger.commit(sent.entry)
            log.warning("round %s asked again (the coordinator restarted?): sending the reply "
                        "already signed, with no new spend", self.server_round)
            return self.message(sent)
        if self.kind == "train" and any(
                (e["record"]["run_id"], e["record"]["round"], e["record"]["kind"])
                == (self.run_id, self.server_round, "train") for e in self.ledger.entries()):
            return self.reply(self.record("refused", reason=(
                f"round {self.server_round} of run {self.run_id} was already trained on this "
                "node and its reply is not kept for this model: not training it twice")))
        return None

    def message(self, reply: Outgoing) -> Message:
        """The Flower message carrying a signed reply.

        Entries the server has not acknowledged (after its ledger head) travel along,
        so a coordinator that lost replies still gets every record of this node.
        """
        content = entry_recorddict(reply.entry,
                                   self.ledger.unsent(self.ledger_head, self.run_id, reply.entry))
        if reply.arrays is not None:
            content["arrays"] = to_record(reply.arrays)
        if reply.metrics:
            content["metrics"] = MetricRecord(reply.metrics)
        return Message(content=content, reply_to=self.msg)


class RoundTraining(Protocol):
    """How one train round is run: DP-SGD, or the non-private baseline.

    The two differ only in these steps; `train` runs everything else once, the same way.
    """

    steps: int  # optimizer steps this round

    def refusal(self) -> str | None:
        """Why this node will not train this round, or None."""

    def prepare(self, train_set: Features, optimizer: torch.optim.Optimizer
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
        """The module, optimizer and loader to train with."""

    def record(self, outcome: TrainOutcome) -> PrivacyRecord:
        """The round's record, once the steps taken are accounted for."""


class PrivateTraining:
    """DP-SGD for one round: the node's privacy decisions, in the order they are taken.

    1. The plan (sigma, q, steps per round) is fixed on the node's first round of the run
       and stored; later rounds reuse it, so the noise never drops below what the budget
       was planned for.
    2. A round that would take the node past its budget is refused before training.
    3. Opacus trains with Poisson sampling at the plan's q, its accountant resuming the
       node's whole history.
    4. The steps taken are saved before anything is sent, and Opacus must have counted
       the same steps: the record's epsilon is that of what really ran.
    """

    engine: PrivacyEngine  # set by prepare(); its accountant counts the steps run

    def __init__(self, node: NodeRound, schedule: LocalSchedule) -> None:
        """1. The run's stored plan, or on its first round a new one, stored at once."""
        plan = node.state.plan(node.run_id)
        if plan is None:
            cfg = node.cfg
            plan = privacy.plan(cfg.privacy, budget=node.budget.epsilon, delta=node.budget.delta,
                                sample_rate=schedule.sample_rate,
                                steps_per_round=schedule.steps_per_round,
                                planned_rounds=cfg.federation.num_rounds)
            node.state.set_plan(node.run_id, plan)
            node.state.save(node.files.state)
        self.node, self.plan, self.schedule = node, plan, schedule
        self.steps = plan.steps_per_round

    def refusal(self) -> str | None:
        """2. The budget check: one more round of the plan must fit the node's budget."""
        try:
            privacy.next_round_epsilon(self.node.state.history(), self.plan)
        except privacy.BudgetExhausted as exc:
            return str(exc)
        return None

    def prepare(self, train_set: Features, optimizer: torch.optim.Optimizer
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
        """3. Opacus's clipping, noise and Poisson loader at the plan's settings."""
        # Not shuffled: make_private swaps the sampler for Poisson sampling at
        # 1 / len(loader), and checks that rate against the plan's.
        loader = train_set.loader(self.schedule.batch_size)
        self.engine, model, optimizer, loader = privacy.make_private(
            train_set.module, optimizer, loader, self.plan, self.node.state.history())
        return model, optimizer, loader

    def record(self, outcome: TrainOutcome) -> PrivacyRecord:
        """4. Save the spend, cross-check it with Opacus's accountant, and record it."""
        node, plan = self.node, self.plan
        # Saved before the reply exists: a node killed after training still counts it.
        node.state.add_steps(node.run_id, plan.noise_multiplier, plan.sample_rate, outcome.steps)
        node.state.save(node.files.state)
        if sum(n for *_, n in privacy.history_of(self.engine)) != sum(
                n for *_, n in node.state.history()):
            raise RuntimeError("Opacus counted other steps than the node's state: not sending")
        return node.record("train", steps=outcome.steps)


class BaselineTraining:
    """Training without DP: a researcher's baseline, refused by any node with a budget."""

    def __init__(self, node: NodeRound, schedule: LocalSchedule) -> None:
        self.node, self.schedule = node, schedule
        self.steps = schedule.steps_per_round

    def refusal(self) -> str | None:
        """A node that declared a budget trains with DP-SGD or not at all."""
        if self.node.budget.declared:
            return "non-private training requested; this node accepts DP-SGD only"
        return None

    def prepare(self, train_set: Features, optimizer: torch.optim.Optimizer
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
        """The module and optimizer as they are, over shuffled epochs of the rows."""
        loader = train_set.loader(self.schedule.batch_size, shuffle=True)
        return train_set.module, optimizer, loader

    def record(self, outcome: TrainOutcome) -> PrivacyRecord:
        """No mechanism, no guarantee: the record says epsilon is infinite."""
        return self.node.record("train", steps=outcome.steps, total_steps=outcome.steps,
                                epsilon=float("inf"))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train one round on this node's rows; answer with the update and its signed record.

    A repeated request gets the reply already signed; a refused round sends no update.
    """
    node = NodeRound(msg, context, "train")
    answered = node.replay()
    if answered is not None:
        return answered
    cfg = node.cfg
    # The empirical audit's canaries replace a simulated node's rows (client/canaries.py).
    train_set = (canary_features(cfg, context.node_config, node.model)
                 or node.features(node.train_rows))
    schedule = local_schedule(len(train_set.dataset), cfg.train)
    mode: RoundTraining = (PrivateTraining(node, schedule) if cfg.privacy.dp
                           else BaselineTraining(node, schedule))
    reason = closed_run(node.ledger, node.run_id) or mode.refusal()
    if reason is not None:
        log.warning("node %s refuses round %s: %s", context.node_id, node.server_round, reason)
        return node.reply(node.record("refused", reason=reason))
    # Per node and round: Poisson sampling, noise and shuffling all draw from torch's generator.
    torch.manual_seed(node.seed())
    adamw = make_optimizer(train_set.module, cfg.learning_rate)
    moments.restore(node.files.moments, node.run_id, train_set.module, adamw)
    model, optimizer, loader = mode.prepare(train_set, adamw)
    outcome = train_steps(model, optimizer, loader, mode.steps, node.device)
    record = mode.record(outcome)
    moments.save(node.files.moments, node.run_id, train_set.module, adamw)
    metrics: dict[str, float] = {"num-examples": len(train_set.dataset)}
    if cfg.privacy.report_train_loss:
        metrics["train-loss"] = outcome.mean_loss
    return node.reply(record, metrics, trainable_state(node.model))


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's held-out rows, with a signed record."""
    node = NodeRound(msg, context, "evaluate")
    answered = node.replay()
    if answered is not None:
        return answered
    eval_set = node.features(node.eval_rows)
    loss, accuracy = evaluate(eval_set.module, eval_set.loader(EVAL_BATCH),
                              node.device)
    metrics = {"num-examples": len(eval_set.dataset), "eval-loss": loss,
               "eval-accuracy": accuracy}
    return node.reply(node.record("evaluate"), metrics)


@app.query("attest")
def attest_end_of_run(msg: Message, context: Context) -> Message:
    """Sign and send this node's end-of-run attestation (client/attestation.py)."""
    return attest(msg, context)
