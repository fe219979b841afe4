"""The test cluster itself: two nodes, and no process of it listening beyond loopback."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def listening_address(local: str) -> str:
    """The address part of ss's "Local Address:Port" column ("127.0.0.1:80", "[::1]:80", "*:80", "127.0.0.53%lo:53")."""
    host = local.rsplit(":", 1)[0].strip("[]")
    return host.split("%", 1)[0]


def is_loopback(host: str) -> bool:
    if host == "*":
        return False
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.parametrize(("local", "loopback"), [
    ("127.0.0.1:6379", True), ("[::ffff:127.0.0.1]:40363", True), ("[::1]:8000", True), ("127.0.0.53%lo:53", True),
    ("0.0.0.0:6379", False), ("*:46189", False), ("[::]:80", False),
])
def test_what_counts_as_loopback(local, loopback):
    assert is_loopback(listening_address(local)) is loopback


def descendants(roots: set[int]) -> set[int]:
    """`roots` and every process started under them (workers are the raylets' children)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, grew = set(roots), True
    while grew:
        grown = found | {pid for pid, parent in parents.items() if parent in found}
        grew, found = grown != found, grown
    return found


@pytest.mark.ray
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_every_process_of_the_cluster_listens_on_loopback_only(ray_cluster):
    import ray

    ray.init(address=ray_cluster.address)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        assert len(nodes) == 2 and {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}

        @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        def worker_pid() -> int:
            return os.getpid()

        workers = set(ray.get([worker_pid.remote() for _ in range(4)]))  # workers on both nodes listen too
        roots = {os.getpid()} | {info.process.pid for node in ray_cluster.list_all_nodes()
                                 for infos in node.all_processes.values() for info in infos}
        ours = descendants(roots)
        assert workers <= ours
        table = subprocess.run(["ss", "-Hltunp"], capture_output=True, text=True, check=True).stdout
        sockets = [(line.split()[4], {int(p) for p in re.findall(r"pid=(\d+)", line)}) for line in table.splitlines()]
        listening = [local for local, pids in sockets if pids & ours]
        assert len(listening) > 5  # gcs, raylets, object managers, workers, the driver
        assert [local for local in listening if not is_loopback(listening_address(local))] == []
    finally:
        ray.shutdown()
