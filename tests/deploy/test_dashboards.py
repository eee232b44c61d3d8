"""The Grafana dashboards: current with their definitions, well-formed, and naming real metrics.

Whether every panel's query returns data is tested against a live Prometheus in
tests/deploy/test_dashboards_live.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayService
from scripts.render_dashboards import DASHBOARDS, differences

DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def queries(dashboard: dict) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_dashboards_are_what_their_definitions_write() -> None:
    assert differences() == [], "run: python scripts/render_dashboards.py"


def test_there_are_the_three_dashboards() -> None:
    assert {path.stem for path in DASHBOARD_FILES} == {"gateway", "replicas", "loadtest"}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.stem)
def test_a_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"].startswith("kvgate-") and dashboard["title"].startswith("kvgate ")
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for title, expr in queries(dashboard):
        used = set(re.findall(r"\$(\w+)", expr))
        assert used <= variables | GRAFANA_BUILTINS, f"{title}: unknown variable in {expr}"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title


def _exported_names(registry_text: str) -> set[str]:
    names = set()
    for line in registry_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
    return names


async def test_the_gateway_dashboard_names_only_metrics_the_gateway_exports() -> None:
    exported: set[str] = set()
    for config in (
        GatewayConfig(index={"backend": "redis"}),
        GatewayConfig(precise={"enabled": True}),
    ):
        service = GatewayService(config)
        try:
            exported |= _exported_names(service.metrics.render().decode())
        finally:
            await service.stop()
    used = {
        name
        for _, expr in queries(load(DASHBOARDS / "gateway.json"))
        for name in re.findall(r"kvgate_\w+", expr)
    }
    assert used and used <= exported, sorted(used - exported)
