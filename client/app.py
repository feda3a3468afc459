"""The Flower ClientApp: one node's private local training and evaluation.

Simulation (`fedpriv simulate`) and deployment (SuperNode) run this same app.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader

from client.node import NodeBudget, PrivacyState, budget_of, local_data, node_index
from common import privacy
from common.config import RunConfig
from common.data import encode
from common.model import (
    build_model,
    load_tokenizer,
    load_trainable_state,
    pick_device,
    trainable_state,
)
from common.records import PrivacyRecord
from common.training import evaluate, make_optimizer, train_steps
from common.weights import from_record, to_record

app = ClientApp()
log = logging.getLogger("fedpriv.client")


def _request(msg: Message) -> tuple[RunConfig, int]:
    config = dict(msg.content["config"])
    server_round = int(config.pop("server-round"))
    return RunConfig.from_flat(config), server_round


def _prepare(msg: Message, cfg: RunConfig, context: Context):
    train_rows, eval_rows = local_data(cfg, context.node_config)
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, train_rows.label_names, cfg.train.seed)
    load_trainable_state(model, from_record(msg.content["arrays"]))
    device = pick_device(cfg.train.device)
    return (encode(train_rows, tokenizer, cfg.model.max_length),
            encode(eval_rows, tokenizer, cfg.model.max_length), model.to(device), device)


def _record(kind: str, context: Context, server_round: int, state: PrivacyState,
            budget: NodeBudget, **fields) -> PrivacyRecord:
    """This node's privacy record for the round, from its plan and accountant history."""
    p = state.plan
    base = dict(run_id=context.run_id, round=server_round, node_id=context.node_id, kind=kind,
                mechanism="none", accountant="", noise_multiplier=0.0, sample_rate=0.0,
                steps=0, total_steps=sum(n for _, _, n in state.history), max_grad_norm=0.0,
                delta=budget.delta, epsilon=0.0, epsilon_budget=budget.epsilon)
    if p is not None:
        base.update(mechanism=privacy.MECHANISM, accountant=p.accountant,
                    noise_multiplier=p.noise_multiplier, sample_rate=p.sample_rate,
                    max_grad_norm=p.max_grad_norm,
                    epsilon=privacy.epsilon_spent(state.history, budget.delta, p.accountant))
    return PrivacyRecord(**{**base, **fields})


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, server_round = _request(msg)
    budget = budget_of(cfg, context.node_config)
    train_set, _, model, device = _prepare(msg, cfg, context)
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True)
    steps = cfg.train.local_steps or cfg.train.local_epochs * len(loader)
    state = PrivacyState.load(context)

    def record(kind: str, **fields) -> PrivacyRecord:
        return _record(kind, context, server_round, state, budget, **fields)

    if not cfg.privacy.dp:
        if budget.declared:
            return _refuse(msg, record("refused", reason="non-private training requested; "
                                       "this node accepts DP-SGD only"))
        torch.manual_seed(_seed(cfg, context, server_round))
        optimizer = make_optimizer(model, cfg.train.learning_rate)
        outcome = train_steps(model, optimizer, loader, steps, device)
        return _reply(msg, cfg, model, len(train_set), outcome.mean_loss,
                      record("train", steps=steps, epsilon=float("inf")))

    if state.plan is None:
        state.plan = privacy.plan(cfg.privacy, budget=budget.epsilon, delta=budget.delta,
                                  sample_rate=1 / len(loader), steps_per_round=steps,
                                  planned_rounds=cfg.federation.num_rounds)
        state.save(context)
    try:
        privacy.check_budget(state.history, state.plan)
    except privacy.BudgetExhausted as exc:
        log.warning("node %s refuses round %s: %s", context.node_id, server_round, exc)
        return _refuse(msg, record("refused", reason=str(exc)))

    torch.manual_seed(_seed(cfg, context, server_round))
    optimizer = make_optimizer(model, cfg.train.learning_rate)
    engine, dp_model, dp_optimizer, dp_loader = privacy.make_private(
        model, optimizer, DataLoader(train_set, batch_size=cfg.train.batch_size),
        state.plan, state.history)
    outcome = train_steps(dp_model, dp_optimizer, dp_loader, state.plan.steps_per_round, device)
    state.history = privacy.history_of(engine)
    state.save(context)
    return _reply(msg, cfg, model, len(train_set), outcome.mean_loss,
                  record("train", steps=outcome.steps))


def _seed(cfg: RunConfig, context: Context, server_round: int) -> int:
    return cfg.train.seed * 1_000_003 + node_index(context) * 1_009 + server_round


def _reply(msg: Message, cfg: RunConfig, model: torch.nn.Module, num_examples: int,
           train_loss: float, rec: PrivacyRecord) -> Message:
    # Everything in the MetricRecord leaves the node unprotected by DP: name it in the record.
    metrics = {"num-examples": num_examples}
    if cfg.privacy.report_train_loss:
        metrics["train-loss"] = train_loss
    content = replace(rec, disclosed=dict(metrics)).to_recorddict()
    content["arrays"] = to_record(trainable_state(model))
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


def _refuse(msg: Message, rec: PrivacyRecord) -> Message:
    """A refusal is a normal reply carrying only the record: the server logs it and goes on."""
    return Message(content=rec.to_recorddict(), reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    cfg, server_round = _request(msg)
    _, eval_set, model, device = _prepare(msg, cfg, context)
    loss, accuracy = evaluate(model, eval_set, cfg.train.batch_size, device)
    metrics = {"num-examples": len(eval_set), "eval-loss": loss, "eval-accuracy": accuracy}
    rec = _record("evaluate", context, server_round, PrivacyState.load(context),
                  budget_of(cfg, context.node_config), disclosed=dict(metrics))
    content = rec.to_recorddict()
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)
