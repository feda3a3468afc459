"""The partners' trust boundary, attacked the way the attacks were first carried out.

`fedpriv server` and `fedpriv client` run as the README says (TLS, node authentication,
the gateway, process isolation with SuperExec secrets) on 127.0.0.1. Then:

* an outsider who holds only the public ca.pem tries Flower's own tools and HTTP calls
  against the coordinator's public address, and, as another local user, the loopback
  ports: every attempt is refused and the real run completes;
* the coordinator's operator submits a run whose ClientApp was changed to leave a marker,
  read a partner's data file, raise its budget and put a row in its reply: no node runs
  it, the row is nowhere, the budgets hold, and the real run completes;
* a node signs with a ledger key the coordinator never admitted: its records are
  rejected with the node named.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient

from certs import node_keys
from cli.coordinator import write_flwr_home
from cli.gateway import TlsFiles
from cli.processes import child_env, executable
from tests.helpers.data import embedded_rows, write_csv, write_partner_csvs
from tests.helpers.deploy import (
    TINY_RUN,
    client_args,
    node_ids,
    server_args,
    server_records,
)
from tests.helpers.pki import make_pki
from tests.helpers.processes import Proc, free_port, processes, start, wait_until

pytestmark = pytest.mark.e2e


def flwr(home: Path, *args: str, timeout: float = 120) -> dict:
    """Flower's own `flwr` CLI with the connection in `home`: its JSON answer, or for a
    command without JSON output (`flwr log`) whether it printed no error, and its text."""
    json_output = args[0] != "log"
    done = subprocess.run([executable("flwr"), *args, *(["--format", "json"] * json_output)],
                          env=child_env(FLWR_HOME=str(home)), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    start = done.stdout.find("{")
    if json_output and start >= 0:
        return json.loads(done.stdout[start:])
    return {"success": done.returncode == 0 and "Error" not in text, "error-message": text}


def claim(address: str, task_type: TaskType, ca: Path | None) -> int:
    """What a process without the SuperExec secret gets when it claims a task there."""
    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=ca is None,
        root_certificates=None if ca is None else str(ca),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
    try:
        client.AcquireTask(AcquireTaskRequest(supported_task_types=[task_type]))
    except httpx.HTTPStatusError as err:
        return err.response.status_code
    finally:
        client.close()
    return 200


def local_port(server: Proc) -> int:
    """The SuperLink's own loopback port, as `fedpriv server` announces it."""
    return int(server.wait_for(r"Control API answers on 127\.0\.0\.1:(\d+)", 120).group(1))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_outsider_with_the_public_ca_gets_nothing(tmp_path):
    pki = make_pki(tmp_path / "certs", ["alice", "bob"])
    node_keys.create_node_keys(tmp_path / "mallory", "mallory")  # never admitted
    data = write_partner_csvs(tmp_path, ["alice", "bob"])
    port, run_dir, coord = free_port(), tmp_path / "run", tmp_path / "coord"
    node_ports = {name: free_port() for name in data}
    outsider = write_flwr_home(tmp_path / "outsider", f"127.0.0.1:{port}",
                               TlsFiles(pki / "ca.pem", pki / "server.pem", pki / "server.key"))
    with processes() as started:
        server = start(started, server_args(pki, port, coord, *TINY_RUN, "--num-rounds", "2",
                                            "--run-dir", str(run_dir), timeout=400),
                       tmp_path / "server.log")
        run_id = server.wait_for(r"started run (\d+)", 120).group(1)
        link_port = local_port(server)
        for name, path in data.items():
            start(started, client_args(f"127.0.0.1:{port}", pki, name, path, 5.0,
                                       tmp_path / f"node-{name}", node_ports[name]),
                  tmp_path / f"client-{name}.log")
        # 1. Flower's own CLI against the public address: every Control API call refused.
        attempts = {
            "ls": flwr(outsider, "ls"),
            "log": flwr(outsider, "log", run_id, "--show"),
            "stop": flwr(outsider, "stop", run_id),
            "run": flwr(outsider, "run", str(coord / "app")),
            "register": flwr(outsider, "supernode", "register",
                             str(tmp_path / "mallory" / "node-mallory.pub")),
        }
        for what, answer in attempts.items():
            assert not answer["success"], what
            assert "403" in answer["error-message"], (what, answer)
        # 2. Claiming the ServerApp task: refused by the gateway, and on the loopback port
        #    (another local user) by the SuperLink for want of the secret. The same for a
        #    partner's ClientApp tasks on its node's local port.
        assert claim(f"127.0.0.1:{port}", TaskType.SERVER_APP, pki / "ca.pem") == 403
        assert claim(f"127.0.0.1:{link_port}", TaskType.SERVER_APP, pki / "ca.pem") == 401
        wait_until(lambda: "SuperNode ID" in (tmp_path / "client-alice.log").read_text(), 180,
                   "alice's SuperNode to connect", server)
        assert claim(f"127.0.0.1:{node_ports['alice']}", TaskType.CLIENT_APP, None) == 401
        # 3. A node with the outsider's own key, through the gateway: not admitted.
        stranger = start(started, [executable("flower-supernode"), "--superlink",
                                   f"127.0.0.1:{port}", "--root-certificates",
                                   str(pki / "ca.pem"), "--auth-supernode-private-key",
                                   str(tmp_path / "mallory" / "node-mallory.key"), "--port",
                                   str(free_port()), "--max-retries", "0"],
                         tmp_path / "stranger.log", FLWR_HOME=str(tmp_path / "stranger"))
        assert stranger.wait(90) != 0
        assert "Failed to activate SuperNode" in stranger.text()
        code = server.wait(400)
        assert code == 0, server.tail()
    assert re.search(rf"run {run_id} finished:completed", server.text())
    ids = node_ids(server.text())
    assert {r.node_id for r in server_records(run_dir)} == set(ids.values())
    # Only the admitted nodes were ever registered.
    assert json.loads((coord / "admitted-nodes.json").read_text())["nodes"].keys() == set(ids)
    # 4. Nobody else can read the coordinator's or a node's state.
    assert mode(coord) == 0o700 and mode(run_dir) == 0o700
    for path in [coord / "superlink.db", coord / "superlink.log", coord / "superexec.secret",
                 coord / "admitted-nodes.json", *coord.glob("run-config-*.toml"),
                 coord / "gateway" / "server-bundle.pem", run_dir / "ledger.jsonl"]:
        assert mode(path) == 0o600, path
    for name in data:
        state = tmp_path / f"node-{name}"
        assert mode(state) == 0o700
        for path in (state / "superexec.secret", state / "ledger.jsonl",
                     state / "privacy-state.json", *(state / "outbox").iterdir()):
            assert mode(path) == 0o600, path


EVIL_TRAIN = '''

@app.train()
def train(msg: Message, context: Context) -> Message:
    """Changed by the coordinator's operator: leave a mark, read the data, spend more."""
    import pathlib

    from flwr.app import ConfigRecord

    pathlib.Path({marker!r}).write_text("the changed ClientApp ran")
    row = pathlib.Path(context.node_config["data-path"]).read_text().splitlines()[1]
    context.node_config["max-epsilon"] = 50.0
    reply = honest_train(msg, context)
    reply.content["leak"] = ConfigRecord({{"row": row}})
    return reply
'''


def evil_app(app: Path, dest: Path, marker: Path) -> Path:
    """A copy of the coordinator's app whose ClientApp is changed in the way of the attack."""
    subprocess.run(["cp", "-r", str(app), str(dest)], check=True)
    source = dest / "client" / "app.py"
    text = source.read_text()
    honest = "@app.train()\ndef train(msg: Message, context: Context) -> Message:"
    assert honest in text
    text = text.replace(honest, "def honest_train(msg: Message, context: Context) -> Message:")
    source.write_text(text + EVIL_TRAIN.format(marker=str(marker)))
    return dest


def test_nodes_run_only_approved_code_and_admitted_keys(tmp_path):
    pki = make_pki(tmp_path / "certs", ["alice", "bob"])
    # Bob signs with a ledger key the coordinator never admitted.
    rogue = node_keys.create_node_keys(tmp_path / "rogue", "bob").files[2]
    # Made here, so that not even this file (staged with the app) holds it.
    secret = f"SECRET-ROW-{uuid.uuid4().hex} nobody outside alice's node may ever read this"
    rows = write_partner_csvs(tmp_path, ["alice", "bob"])
    write_csv(rows["alice"], [(secret, "positive"), *embedded_rows(199, seed=11)])
    budgets = {"alice": 1.0, "bob": 3.0}
    port, run_dir, coord = free_port(), tmp_path / "run", tmp_path / "coord"
    marker = tmp_path / "MARKER"
    with processes() as started:
        server = start(started, server_args(pki, port, coord, *TINY_RUN, "--num-rounds", "2",
                                            "--min-updates", "1", "--epsilon", "50",
                                            "--run-dir", str(run_dir), timeout=500),
                       tmp_path / "server.log")
        run_id = server.wait_for(r"started run (\d+)", 120).group(1)
        approved = server.wait_for(r"app sha256 ([0-9a-f]{64})", 10).group(1)
        clients = {}
        for name, budget in budgets.items():
            extra = ["--ledger-key", str(rogue)] if name == "bob" else []
            clients[name] = start(started, client_args(
                f"127.0.0.1:{port}", pki, name, rows[name], budget, tmp_path / f"node-{name}",
                free_port(), *extra), tmp_path / f"client-{name}.log")
        # The operator, on the coordinator's own host, submits the changed app.
        evil = evil_app(coord / "app", tmp_path / "evil-app", marker)
        evil_config = tmp_path / "evil.toml"
        evil_config.write_text(f'num-rounds = 1\nmodel = "tiny"\nmax-length = 32\n'
                               f'max-examples = 400\nround-timeout = 120.0\n'
                               f'min-train-clients = 2\nrun-dir = "{tmp_path / "evil-run"}"\n')
        submitted = flwr(coord / "flwr-home", "run", str(evil), "--run-config", str(evil_config))
        assert submitted["success"], submitted
        evil_id = str(submitted["run-id"])
        for name in budgets:
            clients[name].wait_for(rf"refusing run {evil_id}: app fedpriv/fedpriv 0\.1\.0 "
                                   r"sha256 [0-9a-f]{64} is not approved", 300)
        evil_info = flwr(coord / "flwr-home", "ls", "--run-id", evil_id)
        code = server.wait(500)
        assert code == 0, server.tail()
    # The legitimate run completed with alice's updates; bob's records were rejected.
    assert re.search(rf"run {run_id} finished:completed", server.text())
    ids = node_ids(server.text())
    records = server_records(run_dir)
    assert {r.node_id for r in records} == {ids["alice"]}
    assert [r.round for r in records if r.kind == "train"] == [1, 2]
    assert all(r.epsilon <= budgets["alice"] for r in records)
    metrics = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    for row in metrics[1:]:  # after round 0, the initial model's evaluation
        assert [f["node"] for f in row["failures"]] == [ids["bob"]]
        assert re.fullmatch(rf"records signed by ledger key \w+\.\.\., not the key admitted "
                            rf"for node {ids['bob']} \(\w+\.\.\.\)", row["failures"][0]["why"])
    # The changed app never ran on a node: no marker, and the coordinator saw refusals.
    assert not marker.exists()
    assert evil_info["runs"][0]["fab-hash"] != approved
    evil_metrics = json.loads((tmp_path / "evil-run" / "metrics.json").read_text())["rounds"]
    reasons = [f["why"] for row in evil_metrics for f in row["failures"]]
    assert len(reasons) == 2 and all("not approved on this node" in r for r in reasons)
    # The row is nowhere: not in any reply, ledger, log, run folder or Flower database.
    leaked = [path for path in tmp_path.rglob("*") if path.is_file()
              and path != rows["alice"] and secret.encode() in path.read_bytes()]
    assert leaked == []
    # Alice's own spend stayed within the 1.0 she accepts.
    state = json.loads((tmp_path / "node-alice" / "privacy-state.json").read_text())
    assert state["runs"] and all(h[0] > 0 for run in state["runs"].values()
                                 for h in run["history"])
    assert max(r.epsilon for r in records) <= 1.0
