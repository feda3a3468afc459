"""`fedpriv audit-empirical` end to end, small: the tiny model, 2 real clients and one canary
client (64 canaries), 2 rounds. Without noise every canary is guessed right and the bound
is the most 64 canaries can prove; with noise at epsilon 1 it stays below the claim."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli.main import main
from common.empirical import one_run_epsilon

pytestmark = pytest.mark.e2e
SMALL = ["--model", "tiny", "--num-clients", "2", "--canary-clients", "1", "--num-rounds", "2",
         "--max-examples", "300", "--max-length", "32", "--local-steps", "8",
         "--learning-rate", "0.05"]


def row_of(out) -> dict:
    return json.loads((out / "empirical.json").read_text())


def test_without_noise_every_canary_is_found(tmp_path, capsys):
    out = tmp_path / "off"
    assert main(["audit-empirical", *SMALL, "--no-dp", "--out", str(out)]) == 0
    row = row_of(out)
    assert (row["canaries"], row["guesses"], row["correct"]) == (64, 64, 64)
    assert row["epsilon_lower_bound"] == pytest.approx(
        one_run_epsilon(64, 64, 64, row["delta"], 0.95))
    assert row["epsilon_lower_bound"] > 2.5 and row["rounds_observed"] == [1, 2]
    with np.load(out / "auditor.npz") as auditor:
        assert len(auditor["included"]) == 64
    # Only the included canaries reached the node: its file holds those and no others.
    with np.load(out / "canaries" / "client-2.npz") as node:
        assert len(node["labels"]) == int(np.load(out / "auditor.npz")["included"].sum())
    page = (out / "audit.html").read_text()
    assert 'id="empirical"' in page and "noise off (no DP)" in page
    assert json.loads((out / "audit.json").read_text())["empirical"][0]["correct"] == 64
    printed = capsys.readouterr().out
    assert "empirical privacy audit" in printed and "consistent" in printed


def test_with_noise_the_bound_stays_below_the_claim(tmp_path):
    out = tmp_path / "eps1"
    assert main(["audit-empirical", *SMALL, "--epsilon", "1", "--out", str(out)]) == 0
    row = row_of(out)
    assert 0.9 < row["claimed_epsilon"] <= 1.0
    assert row["epsilon_lower_bound"] <= row["claimed_epsilon"]
    assert row["correct"] < row["guesses"]  # the noise hides some canaries
    report = json.loads((out / "audit.json").read_text())
    assert report["ok"] is True  # the run's ledger itself audits clean, attestations and all


def test_a_used_out_folder_is_refused(tmp_path, capsys):
    (tmp_path / "note.txt").write_text("keep")
    assert main(["audit-empirical", *SMALL, "--out", str(tmp_path)]) == 2
    assert "invalid --out" in capsys.readouterr().err
    assert (tmp_path / "note.txt").read_text() == "keep"
