"""The pieces of the trust boundary that need no running federation: the app's hash,
the node's approval of apps, the gateway's configuration, secrets and admitted keys.
The attacks themselves are replayed in tests/e2e/test_trust_boundary_e2e.py."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from cli.app_package import app_files, fab_bytes, fab_hash, find_app_dir, stage
from cli.gateway import DENIED, FLEET_PREFIX, haproxy_config
from client.executor import ApprovedApps
from common.errors import ConfigError
from common.files import ensure_secret, private_dir
from server.admission import AdmittedNode, ledger_keys, read_admitted, write_admitted

ROOT = Path(__file__).resolve().parents[2]


def small_app(folder: Path) -> Path:
    """This project's pyproject and two packages, a .gitignore'd venv and run folder."""
    folder.mkdir()
    shutil.copyfile(ROOT / "pyproject.toml", folder / "pyproject.toml")
    (folder / ".gitignore").write_text(".venv/\nruns/\n*.key\n")
    for package in ("client", "server"):
        shutil.copytree(ROOT / package, folder / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for ignored in (".venv/lib/site.py", "runs/latest/notes.md", "client/node.key"):
        (folder / ignored).parent.mkdir(parents=True, exist_ok=True)
        (folder / ignored).write_text("not part of the app\n")
    return folder


def test_the_app_hash_is_the_fab_hash_flower_computes(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    app = small_app(tmp_path / "app")
    files = app_files(app)
    assert not any(name.startswith((".venv/", "runs/")) for name in files)
    digest = fab_hash(files)
    assert digest == hashlib.sha256(build_fab_from_disk(app)).hexdigest()
    # The staged copy `fedpriv server` submits builds to the same bytes again.
    staged = stage(files, tmp_path / "staged")
    assert hashlib.sha256(build_fab_from_disk(staged)).hexdigest() == digest
    # Any change to the code is a different app.
    (app / "client" / "app.py").write_text((app / "client" / "app.py").read_text() + "#\n")
    assert fab_hash(app_files(app)) != digest


def test_this_installation_is_an_app(tmp_path):
    assert find_app_dir() == ROOT
    with pytest.raises(ConfigError, match="no Flower app at"):
        find_app_dir(tmp_path)
    assert fab_bytes(app_files(ROOT))[:2] == b"PK"  # a zip, as Flower ships it


def test_a_node_approves_by_the_hash_of_the_bytes_it_received():
    content = b"the FAB bytes"
    digest = hashlib.sha256(content).hexdigest()
    approved = ApprovedApps(frozenset({digest}))
    assert approved.refusal("fedpriv/fedpriv", "0.1.0", content) is None
    why = approved.refusal("fedpriv/fedpriv", "0.1.0", content + b"!")
    assert why is not None
    assert (f"app fedpriv/fedpriv 0.1.0 sha256 {hashlib.sha256(content + b'!').hexdigest()} "
            "is not approved on this node") in why
    assert "--approve-app" in why
    assert ApprovedApps(frozenset()).refusal("x/y", "1", content) is not None


def test_the_gateway_passes_the_fleet_api_only(tmp_path):
    config = haproxy_config("0.0.0.0", 9092, tmp_path / "bundle.pem", 40001,
                            tmp_path / "ca.pem")
    assert "bind 0.0.0.0:9092 ssl crt" in config
    deny = next(line for line in config.splitlines() if "http-request return" in line)
    assert "status 403" in deny and DENIED in deny
    assert f"unless {{ path_beg {FLEET_PREFIX} }} || {{ path /health }}" in deny
    server = next(line for line in config.splitlines() if line.strip().startswith("server "))
    assert "127.0.0.1:40001 ssl verify required ca-file" in server and " check" in server
    assert "ipv6@::1:9092" in haproxy_config("::1", 9092, tmp_path / "b", 1, tmp_path / "c")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed "
                    "(`bash scripts/setup.sh --os-packages` installs it)")
def test_haproxy_accepts_the_configuration(tmp_path):
    from tests.helpers.pki import make_pki

    pki = make_pki(tmp_path / "pki", [])
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((pki / "server.pem").read_bytes() + (pki / "server.key").read_bytes())
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config("127.0.0.1", 9092, bundle, 40001, pki / "ca.pem"))
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_secrets_are_private_made_once_and_refused_when_readable(tmp_path):
    folder = private_dir(tmp_path / "state")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    secret = folder / "superexec.secret"
    first = ensure_secret(secret)
    assert len(first) == 64 and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert ensure_secret(secret) == first
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="is readable by others"):
        ensure_secret(secret)
    folder.chmod(0o755)
    private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_admitted_nodes_round_trip_and_bad_files_are_one_line(tmp_path):
    nodes = [AdmittedNode("alice", 2**63 + 5, "ab" * 32), AdmittedNode("bob", 7, "cd" * 32)]
    path = write_admitted(tmp_path / "admitted.json", nodes)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_admitted(path) == nodes
    assert ledger_keys(str(path)) == {2**63 + 5: "ab" * 32, 7: "cd" * 32}
    assert ledger_keys("") == {}
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="admitted nodes file .* cannot be read"):
        ledger_keys(str(path))


def test_the_executor_outlives_a_task_the_supernode_closed_itself(monkeypatch):
    """A coordinator that goes away mid-round makes the SuperNode fail the task and revoke
    its token: pulling the message and reporting the status then fail. The executor must
    go on to the next task; if it died, the SuperNode would wait for a reply forever."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskResponse  # pylint: disable=E0611
    from flwr.proto.task_pb2 import Task  # pylint: disable=E0611

    from client import executor

    revoked = httpx.HTTPStatusError("401", request=httpx.Request("POST", "http://node"),
                                    response=httpx.Response(401))
    claimed: list[str] = []

    class Node:
        """The SuperNode's Runtime API: two tasks to claim, the first one's token revoked."""

        def AcquireTask(self, request):  # noqa: N802 - Flower's method name
            token = f"token-{len(claimed)}"
            claimed.append(token)
            return AcquireTaskResponse(task=Task(task_id=len(claimed)), token=token)

        def close(self) -> None:
            pass

    def pull_task_input(client):
        if client.token == "token-0":
            raise revoked
        raise RuntimeError("the second task is answered")

    reported: list[str] = []

    def push_task_output(client, context, sub_status, details):
        reported.append(client.token)
        if client.token == "token-0":
            raise revoked

    def runtime_client(address, *interceptors, retry=True):
        node = Node()
        token = next((i.token for i in interceptors if hasattr(i, "token")), None)
        node.token = token  # type: ignore[attr-defined]
        return node

    monkeypatch.setattr(executor, "_runtime_client", runtime_client)
    monkeypatch.setattr(executor, "pull_task_input", pull_task_input)
    monkeypatch.setattr(executor, "push_task_output", push_task_output)
    monkeypatch.setattr(executor, "RuntimeTokenHttpInterceptor",
                        lambda token: type("Token", (), {"token": token})())
    monkeypatch.setattr(executor, "HeartbeatSender", lambda beat: type(
        "Beat", (), {"start": lambda self: None, "is_running": False})())
    executor.serve("127.0.0.1:1", b"secret", ApprovedApps(frozenset()), client_app=None,
                   keep_going=lambda: len(claimed) < 2, poll_interval=0)
    assert claimed == ["token-0", "token-1"]
    assert reported == ["token-0", "token-1"]  # the second task was still closed
