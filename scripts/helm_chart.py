"""Rendering and linting the Helm chart with Helm's own library (helm-python-sdk), no helm binary.

`render` passes the Kubernetes version and the API versions a cluster offers (what `helm template
--kube-version --api-versions` take) through the SDK's native render call: its Python `Chart.render`
does not expose them, and the chart renders ServiceMonitors and PodMonitors only where the Prometheus
Operator's API (monitoring.coreos.com/v1) exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kvgate"
PROMETHEUS_OPERATOR_API = "monitoring.coreos.com/v1"


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "kvgate",
    namespace: str = "kvgate",
    api_versions: Iterable[str] = (),
    kube_version: str | None = None,
    chart: Path = CHART,
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would print them."""
    import helm_python
    from helm_python import _native

    options: dict[str, Any] = {"name": release, "namespace": namespace, "is_install": True}
    if api_versions:
        options["api_versions"] = list(api_versions)
    if kube_version:
        options["kube_version"] = kube_version
    with helm_python.Chart.load(chart) as loaded:
        loaded.validate_schema(values or {})
        rendered = _native.call_string(
            "helm_render", loaded._raw(), json.dumps(values or {}), json.dumps(options)
        )
    return json.loads(rendered)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects among rendered templates, in template order (NOTES.txt left out)."""
    found = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(rendered[path]):
            if document:
                found.append(document)
    return found


def lint(values: dict[str, Any] | None = None, *, kube_version: str | None = None, chart: Path = CHART):
    """Helm's lint report: {"messages": [{"severity", "path", "error"}], "errors": [...]}."""
    import helm_python

    return helm_python.lint(chart, values, strict=True, kube_version=kube_version)


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}
