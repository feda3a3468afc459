"""A whole federated DP run in Flower's simulation engine: tiny model, 2 clients, 2 rounds."""

import csv
import json
from collections import defaultdict

import matplotlib.image
import numpy as np
import pytest

from cli.main import main
from common.config import RunConfig
from common.model import build_model, trainable_state
from common.partition import pool_and_held_out
from server.checkpoint import checkpoint_path, load_checkpoint
from server.ledger import Ledger


@pytest.mark.e2e
def test_simulation_trains_accounts_and_saves_a_usable_model(tmp_path, tiny_cfg, capsys):
    run_dir = tmp_path / "run"
    code = main(["simulate", "--model", "tiny", "--num-clients", "2", "--num-rounds", "2",
                 "--max-examples", "400", "--batch-size", "16", "--local-steps", "3",
                 "--max-length", "32", "--learning-rate", "0.01", "--epsilon", "4",
                 "--partitioner", "dirichlet", "--run-dir", str(run_dir)])
    assert code == 0

    # The global weights moved away from the initial ones.
    initial = trainable_state(build_model(tiny_cfg.model, tiny_cfg.data.label_names, 42))
    final = load_checkpoint(checkpoint_path(run_dir, 2))
    assert set(final) == set(initial)
    assert max(np.abs(final[k] - initial[k]).max() for k in final) > 1e-3

    # One train record per client per round; epsilon grows and stays within budget. Each
    # node closes the run with its attestation of the same totals.
    per_node = defaultdict(list)
    for rec in Ledger(run_dir / "ledger.jsonl").records():
        per_node[rec.node_id].append(rec)
    assert len(per_node) == 2
    for records in per_node.values():
        *records, attested = records
        assert [r.kind for r in records] == ["train", "train"]
        assert [r.round for r in records] == [1, 2]
        assert 0 < records[0].epsilon <= records[1].epsilon <= 4.0
        assert records[1].total_steps == 6
        assert (attested.kind, attested.round, attested.steps) == ("attestation", 2, 0)
        assert (attested.epsilon, attested.total_steps) == (records[1].epsilon, 6)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert metrics["rounds"][2]["epsilon_max"] == max(
        r[-1].epsilon for r in per_node.values())
    assert "end-of-run attestations: 2 of 2 nodes" in capsys.readouterr().err
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["round"]) for row in rows] == [0, 1, 2]
    assert float(rows[2]["epsilon_max"]) == pytest.approx(metrics["rounds"][2]["epsilon_max"])
    for name in ("accuracy.png", "epsilon.png"):
        height, width, _ = matplotlib.image.imread(run_dir / name).shape
        assert height > 100 and width > 100, name

    # The ledger verifies independently: signatures, chains, epsilon recomputed (PRV, RDP).
    assert main(["audit", str(run_dir / "ledger.jsonl"), "--keys", str(run_dir / "node-keys"),
                 "--json", str(tmp_path / "audit.json")]) == 0
    assert json.loads((tmp_path / "audit.json").read_text())["ok"] is True
    for node_dir in (run_dir / "nodes").iterdir():
        assert main(["audit", str(node_dir / "ledger.jsonl"), "--keys",
                     str(run_dir / "node-keys"), "--compare", str(run_dir / "ledger.jsonl")]) == 0

    assert_exported_model_reproduces_the_run(run_dir, metrics["rounds"][-1]["accuracy"])

    # Resumed after its end, the run asks for the attestations again: each node sends the
    # one it signed, so the ledger stays exactly as it was, and complete.
    ledger = (run_dir / "ledger.jsonl").read_bytes()
    assert main(["simulate", "--resume", str(run_dir), "--num-clients", "2"]) == 0
    assert (run_dir / "ledger.jsonl").read_bytes() == ledger
    assert main(["audit", str(run_dir / "ledger.jsonl"), "--keys",
                 str(run_dir / "node-keys")]) == 0


def assert_exported_model_reproduces_the_run(run_dir, accuracy: float) -> None:
    """One line of sentence-transformers loads the final model; on the held-out rows it
    scores what the run's own last evaluation scored, and names the run's labels."""
    from sentence_transformers import SentenceTransformer

    cfg = RunConfig.from_flat(json.loads((run_dir / "run.json").read_text())["config"])
    _, held_out = pool_and_held_out(cfg.data, cfg.train.seed)
    model = SentenceTransformer(str(run_dir / "final_model"), device="cpu")
    predicted = model.encode(held_out.texts, convert_to_tensor=True).argmax(dim=1).tolist()
    correct = sum(p == y for p, y in zip(predicted, held_out.labels, strict=True))
    assert abs(correct / len(held_out) - accuracy) <= 1 / len(held_out)
    id2label = model[0].auto_model.config.id2label
    assert [id2label[i] for i in range(len(id2label))] == list(cfg.data.label_names)


@pytest.mark.e2e
def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ledger.jsonl").write_text('{"keep": "me"}\n')
    code = main(["simulate", "--model", "tiny", "--num-clients", "2", "--num-rounds", "1",
                 "--max-examples", "200", "--run-dir", str(run_dir)])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "ledger.jsonl").read_text() == '{"keep": "me"}\n'
