"""A real two-node Ray cluster on loopback, started once per session; skipped without the `ray` extra.

Ray reads these variables when it is imported, and every node and worker it starts inherits them:
without the first, Ray on Linux resolves this machine's address and its processes listen on every
interface; the second keeps it from sending a usage report to usage-stats.ray.io.
"""

from __future__ import annotations

import os

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

NODE = {"num_cpus": 2, "object_store_memory": 200 * 1024**2, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="session")
def ray_cluster():
    """A head and a worker node, two logical CPUs each (more than this machine has: Ray only counts them)."""
    pytest.importorskip("ray", reason="needs Ray: pip install 'emoserve[ray]'")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def on_cluster(ray_cluster, monkeypatch) -> str:
    """`--ray auto` finds the test cluster (RAY_ADDRESS), never another Ray instance on this machine."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    return ray_cluster.address
