"""deploy/: the files agree with the code they describe (no docker needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from emoserve.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERIES_SUFFIXES = ("_bucket", "_count", "_sum")


def exported_metric_names() -> set[str]:
    metrics = ServiceMetrics()
    metrics.observe_request("/v1/analyze", "POST", 200, 0.1)  # labelled series appear once observed
    text = metrics.render(0, 1).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def family(name: str) -> str:
    """A histogram's series (`_bucket`, `_count`, `_sum`) → the histogram's name."""
    return next((name.removesuffix(suffix) for suffix in SERIES_SUFFIXES if name.endswith(suffix)), name)


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "emoserve.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [variable["definition"] for variable in dashboard["templating"]["list"]]
    return {name for expr in exprs for name in re.findall(r"\bemoserve_[a-z_]+", expr)}


def test_the_dashboard_queries_only_metrics_the_service_exports():
    queried, exported = dashboard_metric_names(), exported_metric_names()
    assert queried and queried <= exported, queried - exported


def test_the_dashboard_shows_every_metric_the_service_exports():
    exported = {family(name) for name in exported_metric_names() if not name.endswith("_created")}
    shown = {family(name) for name in dashboard_metric_names()}
    assert exported <= shown, exported - shown


def test_prometheus_scrapes_the_service_of_the_compose_file():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["emoserve:8000"]
    assert "8000:8000" in compose["services"]["emoserve"]["ports"]


def test_the_dockerfile_installs_the_torch_run_sh_pins():
    pinned = re.search(r'^TORCH_PIN="torch==([^"]+)"', (ROOT / "run.sh").read_text(), re.MULTILINE)[1]
    assert f"ARG TORCH_VERSION={pinned}\n" in (DEPLOY / "Dockerfile").read_text()


def test_the_image_health_check_asks_readyz():
    instructions = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    [healthcheck] = [line for line in instructions if line.startswith("HEALTHCHECK ")]
    assert "/readyz" in healthcheck
