"""`fedpriv simulate --ray-address` on a real two-node Ray cluster on this machine.

Two `ray start` processes (a head and a second node, one CPU each, on 127.0.0.1) make the
cluster; with one CPU a client, Flower's pool has one actor per node, so the clients'
work is scheduled on both. Ray's GCS keeps each actor's node after the run, and the
test reads it there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.processes import free_port, listening, processes, start, wait_until

pytestmark = pytest.mark.e2e

RAY = str(Path(sys.executable).with_name("ray"))

# Run in a process of its own: the test process must not stay connected to a cluster
# that is gone when the next test's simulation calls ray.init. Ray's state API needs the
# dashboard (ray[default]); the GCS answers the same question through ray._private.state.
CLUSTER_VIEW = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps({
    "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
    "actors": [[a["ActorClassName"], a["Address"]["NodeID"]] for a in state.actors().values()],
}))
"""


def cluster_view(address: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CLUSTER_VIEW, address], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_simulate_joins_a_two_node_ray_cluster_and_uses_both_nodes(tmp_path):
    # Ray's socket paths must stay under 107 characters: pytest's tmp_path is too deep.
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
              "--disable-usage-stats", "--block"]
    try:
        with processes() as started:
            head = start(started, [RAY, "start", "--head", "--port", str(port),
                                   "--temp-dir", str(ray_tmp), "--include-dashboard=false",
                                   "--ray-client-server-port", str(free_port()), *common],
                         tmp_path / "ray-head.log")
            wait_until(lambda: listening("127.0.0.1", port), 120, "the Ray head", head)
            second = start(started, [RAY, "start", "--address", address,
                                     "--resources", '{"second_node": 1}', *common],
                           tmp_path / "ray-second.log")
            wait_until(lambda: len(cluster_view(address)["nodes"]) == 2, 120,
                       "the second Ray node", head, second)

            run_dir = tmp_path / "run"
            sim = start(started, [sys.executable, "-m", "cli.main", "simulate",
                                  "--model", "tiny", "--num-clients", "4", "--num-rounds", "2",
                                  "--max-examples", "400", "--batch-size", "16",
                                  "--local-steps", "5", "--max-length", "32", "--epsilon", "8",
                                  "--client-cpus", "1", "--no-central-eval",
                                  "--ray-address", address, "--run-dir", str(run_dir)],
                        tmp_path / "simulate.log")
            assert sim.wait(300) == 0, sim.tail()
            view = cluster_view(address)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert "round 2/2 clients 4 ok 0 refused 0 failed" in sim.text(), sim.tail()
    assert "end-of-run attestations: 4 of 4 nodes" in sim.text()
    client_nodes = {node for cls, node in view["actors"] if cls == "ClientAppActor"}
    assert client_nodes == set(view["nodes"]), view
    assert len(client_nodes) == 2
