"""deploy/ray: the Serve config file and the KubeRay manifest are valid Serve configs whose import path and
settings exist (parsed and checked here; not applied to a cluster)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from emoserve.config import Settings, variables

pytestmark = pytest.mark.ray
schema = pytest.importorskip("ray.serve.schema", reason="needs Ray: pip install 'emoserve[ray]'")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "ray"


def check_serve_config(config: dict) -> None:
    serve_config = schema.ServeDeploySchema.model_validate(config)
    (application,) = serve_config.applications
    module, name = application.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), name))
    Settings.from_flat(**application.args)  # every arg names a setting
    assert set(application.runtime_env["env_vars"]) <= set(variables())


def test_the_serve_config_file_is_a_valid_serve_config():
    check_serve_config(yaml.safe_load((DEPLOY / "serve.yaml").read_text()))


def test_the_rayservice_manifest_carries_the_same_application():
    manifest = yaml.safe_load((DEPLOY / "kuberay.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    check_serve_config(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
