"""A deployed federation for e2e tests: `fedpriv server` / `fedpriv client` command lines,
what their outputs say, and the checks every finished run must pass."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from certs.files import LEDGER_KEYS_DIR
from cli.coordinator import Coordinator
from common.audit import audit
from common.config import RunConfig
from common.data import EMBEDDED_LABELS
from common.ledger.record import PrivacyRecord
from tests.helpers.records import ledger_lines, signed_part

FEDPRIV = [sys.executable, "-m", "cli.main"]
TINY_RUN = ["--model", "tiny", "--max-length", "32", "--batch-size", "16", "--local-steps", "2",
            "--max-examples", "400"]


def server_args(pki: Path, port: int, state: Path, *extra: str, timeout: float = 400
                ) -> list[str]:
    """`fedpriv server` with the coordinator's PKI folder and state dir."""
    return [*FEDPRIV, "server", "--certs-dir", str(pki), "--port", str(port),
            "--state-dir", str(state), "--timeout", str(timeout), *extra]


def client_args(coordinator: str, pki: Path, name: str, data: Path, max_epsilon: float,
                state: Path, port: int, *extra: str) -> list[str]:
    """`fedpriv client` for partner `name` (its node key in `pki`), data and budget."""
    return [*FEDPRIV, "client", "--coordinator", coordinator, "--root-cert", str(pki / "ca.pem"),
            "--node-key", str(pki / f"node-{name}.key"), "--data", str(data),
            "--max-epsilon", str(max_epsilon), "--state-dir", str(state), "--port", str(port),
            "--max-wait-time", "60", *extra]


def node_ids(server_output: str) -> dict[str, int]:
    """Node name -> node id, from the server's 'admitted node-NAME.pub (...): node id N'."""
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"node-([\w.-]+)\.pub \([^)]*\): node id (\d+)", server_output)}


def server_records(run_dir: Path) -> list[PrivacyRecord]:
    """The privacy records of the server's combined ledger, in order."""
    return [PrivacyRecord(**line["record"]) for line in ledger_lines(run_dir / "ledger.jsonl")]


def rounds_reported(run_dir: Path) -> int:
    """The last round in the run's metrics.json, -1 while there is none."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return max(row["round"] for row in
                   json.loads((run_dir / "metrics.json").read_text())["rounds"])
    return -1


def initial_trainable_state() -> dict[str, np.ndarray]:
    from common.model import build_model, trainable_state

    cfg = RunConfig().replace(model="tiny", labels=",".join(EMBEDDED_LABELS))
    return trainable_state(build_model(cfg.model, cfg.data.label_names, cfg.train.seed))


def assert_model_changed(run_dir: Path, server_round: int) -> None:
    """The round's checkpoint holds the tiny model's weights, moved from the initial ones."""
    from server.checkpoint import checkpoint_path, load_checkpoint

    initial = initial_trainable_state()
    final = load_checkpoint(checkpoint_path(run_dir, server_round))
    assert set(final) == set(initial)
    assert max(np.abs(final[k] - initial[k]).max() for k in final) > 1e-4


def wait_for_control_api(link: Coordinator, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            link.nodes()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def assert_own_ledgers_match(run_dir: Path, nodes_dir: Path, ids: dict[str, int]) -> None:
    """Each node's own signed ledger (nodes_dir/node-NAME/ledger.jsonl) holds exactly the
    entries the server recorded for it: same records, same signatures."""
    server_lines = ledger_lines(run_dir / "ledger.jsonl")
    for name, node_id in ids.items():
        own = ledger_lines(nodes_dir / f"node-{name}" / "ledger.jsonl")
        assert own, f"node {name} wrote no ledger entries"
        assert [signed_part(x) for x in own] == [
            signed_part(x) for x in server_lines if x["record"]["node_id"] == node_id]


def assert_nothing_lost(run_dir: Path, nodes_dir: Path, ids: dict[str, int], pki: Path) -> None:
    """Each node's own ledger is exactly what the server holds for it, and it all audits
    against the ledger keys the coordinator admitted (what an auditor is given)."""
    assert_own_ledgers_match(run_dir, nodes_dir, ids)
    report = audit(run_dir / "ledger.jsonl", pki / LEDGER_KEYS_DIR)
    assert report.ok, [str(p) for p in report.failures]
