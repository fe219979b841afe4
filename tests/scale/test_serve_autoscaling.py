"""Serve autoscales EmotionEngine between the settings' min and max replicas, with the settings' delays.

Only the EmotionEngine deployment is deployed (no HTTP proxy), loaded through its DeploymentHandle as the
Ingress and Store replicas call it. The delays and windows are the test's, from `EMOSERVE_RAY_*` settings
(Serve's defaults wait 30 s before adding a replica and 600 s before removing one).
"""

from __future__ import annotations

import threading

import pytest

from emoserve.config import Settings

from ..polling import wait_for
from ..samples import sweep

pytestmark = pytest.mark.ray

APP = "autoscaling"
SETTINGS = {"model": "random:tiny", "ray_min_replicas": 1, "ray_max_replicas": 2, "ray_target_ongoing_requests": 1,
            "ray_upscale_delay_s": 0.5, "ray_downscale_delay_s": 1.0, "ray_look_back_period_s": 1.0,
            "ray_metrics_interval_s": 0.25}


@pytest.fixture
def submit(ray_cluster):
    """EmotionEngine.submit of the deployment alone; Serve and the driver's connection closed after the test."""
    import ray
    from ray import serve

    from emoserve.scale.serve import engine_deployment

    settings = Settings.from_flat(**SETTINGS)
    ray.init(address=ray_cluster.address)
    submit = None
    try:
        serve.start(proxy_location="Disabled")
        submit = serve.run(engine_deployment(settings).bind(settings), name=APP, route_prefix=None).submit
        yield submit
    finally:
        if submit is not None:
            submit.shutdown()  # else its router's metrics thread connects the driver to Ray again
        serve.shutdown()
        ray.shutdown()


def running_replicas() -> int:
    from ray import serve

    return serve.status().applications[APP].deployments["EmotionEngine"].replica_states.get("RUNNING", 0)


def test_sustained_load_adds_a_model_replica_and_its_end_removes_it(submit):
    assert running_replicas() == 1
    clip = sweep(1.0)
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            submit.remote(clip, granularity="utterance", return_embedding=False, origin="test").result()

    callers = [threading.Thread(target=keep_asking) for _ in range(8)]  # 8 in flight against a target of 1
    for thread in callers:
        thread.start()
    try:
        wait_for(lambda: running_replicas() == 2, 90, "Serve to add a second replica under load")
    finally:
        stop.set()
        for thread in callers:
            thread.join(60)
    wait_for(lambda: running_replicas() == 1, 60, "Serve to remove the second replica after the load")
