"""Shared fixtures: a tiny config-built model, data files made once per session, and the
input files of the CLI refusal tests. Helpers themselves live in `tests/helpers/`."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.environment import offline_and_quiet

offline_and_quiet()  # before the libraries below read their settings

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.config import RunConfig  # noqa: E402
from common.data import EMBEDDED_LABELS  # noqa: E402
from tests.helpers.data import embedded_rows, write_bad_data_files, write_csv  # noqa: E402
from tests.helpers.pki import make_pki  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity():
    # Messages read the run/task identity of the process; Flower sets it in real runs.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return RunConfig().replace(**{
        "model": "tiny", "max-length": 32, "batch-size": 8, "local-steps": 2,
        "num-rounds": 2, "learning-rate": 0.01, "max-examples": 400, "epsilon": 8.0,
        "labels": ",".join(EMBEDDED_LABELS)})


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """200 real labelled tweets from the embedded set, re-saved as a partner's UTF-8 CSV.

    Written once per session and shared: a test that changes the file must work on its
    own copy.
    """
    return write_csv(tmp_path_factory.mktemp("data") / "partner.csv", embedded_rows(200))


def _ed25519_public_key(path: Path) -> None:
    """An OpenSSH public key of a kind Flower's node authentication does not use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))


@pytest.fixture(scope="session")
def cli_files(tmp_path_factory) -> Path:
    """For the CLI refusal tests: a good data file and every kind of bad one, a file
    where a folder belongs (note.txt), and a PKI folder (pki/: CA, server, node alice).

    Shared by the whole session: tests only read it, or compare digests around a command.
    """
    d = tmp_path_factory.mktemp("cli-files")
    write_bad_data_files(d)
    (d / "note.txt").write_text("a file, not a folder")
    _ed25519_public_key(d / "ed25519.pub")
    make_pki(d / "pki", ["alice"])
    return d


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail at once if a command gets as far as starting Flower's simulation engine."""
    import simulations.run

    def started(*args, **kwargs):
        raise AssertionError("the simulation started: the bad input was not refused up front")

    monkeypatch.setattr(simulations.run, "_run_simulation", started)
