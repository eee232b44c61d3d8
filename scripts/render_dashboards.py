"""The Grafana dashboards in charts/kvgate/dashboards/, written from the panel definitions below.

    python scripts/render_dashboards.py           # rewrite the JSON files
    python scripts/render_dashboards.py --check   # exit 1 if a file is not what this script writes

Panels are defined here, once, with their PromQL; the JSON is Grafana's dashboard model (schema 39)
with a Prometheus data source variable, laid out row by row. Queries use Grafana's `$__rate_interval`
and the dashboards' variables; the test suite evaluates every one against a live Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[1] / "charts" / "kvgate" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
WIDTH = 24


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    min: float | None = 0
    max: float | None = None
    stack: bool = False
    thresholds: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Row:
    title: str
    panels: list[Panel]


@dataclass
class Variable:
    name: str
    label: str
    query: str = ""
    """label_values(...) for a query variable; empty for a constant one."""
    default: str = ""
    description: str = ""


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[Row]
    variables: list[Variable] = field(default_factory=list)


def _rate(metric: str, selector: str = "", by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping}(rate({metric}{{{selector}}}[{RATE}]))"


def _quantile(q: float, histogram: str, selector: str = "", by: str = "") -> str:
    labels = ", ".join(filter(None, ["le", by]))
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{{{selector}}}[{RATE}])))"


def _ratio(numerator: str, denominator: str, selector: str = "", by: str = "") -> str:
    return f"{_rate(numerator, selector, by)} / {_rate(denominator, selector, by)}"


# --- the gateway ------------------------------------------------------------------------------

MODEL = 'model=~"$model"'
GATEWAY = Dashboard(
    uid="kvgate-gateway",
    title="kvgate gateway",
    description="The gateway's view: cache hits predicted and reported, latency, routing, load, index.",
    variables=[
        Variable("model", "Model", "label_values(kvgate_requests_total, model)"),
    ],
    rows=[
        Row(
            "Prefix cache",
            [
                Panel(
                    "Cache hit rate, reported",
                    [Query(_ratio("kvgate_cached_tokens_total", "kvgate_prompt_tokens_total", MODEL))],
                    unit="percentunit",
                    kind="stat",
                    width=6,
                    max=1,
                    description="Prompt tokens the replicas served from cache, of all prompt tokens.",
                ),
                Panel(
                    "Cache hit rate, predicted",
                    [
                        Query(
                            _ratio(
                                "kvgate_predicted_cached_tokens_total", "kvgate_prompt_tokens_total", MODEL
                            )
                        )
                    ],
                    unit="percentunit",
                    kind="stat",
                    width=6,
                    max=1,
                    description="Prompt tokens the index expected the chosen replica to hold.",
                ),
                Panel(
                    "Hit rate: predicted and reported",
                    [
                        Query(
                            _ratio("kvgate_cached_tokens_total", "kvgate_prompt_tokens_total", MODEL),
                            "reported",
                        ),
                        Query(
                            _ratio(
                                "kvgate_predicted_cached_tokens_total", "kvgate_prompt_tokens_total", MODEL
                            ),
                            "predicted",
                        ),
                        Query(
                            _ratio(
                                "kvgate_cached_tokens_prediction_error_tokens_total",
                                "kvgate_prompt_tokens_total",
                                MODEL,
                            ),
                            "prediction error",
                        ),
                    ],
                    unit="percentunit",
                    max=1,
                    description="Prediction error: |predicted - reported| cached tokens, per prompt token.",
                ),
                Panel(
                    "Reported hit rate by replica",
                    [
                        Query(
                            _ratio(
                                "kvgate_cached_tokens_total", "kvgate_prompt_tokens_total", MODEL, "replica"
                            ),
                            "{{replica}}",
                        )
                    ],
                    unit="percentunit",
                    width=24,
                    max=1,
                ),
            ],
        ),
        Row(
            "Latency",
            [
                Panel(
                    "Time to first token by replica",
                    [
                        Query(
                            _quantile(q, "kvgate_time_to_first_token_seconds", MODEL, "replica"),
                            f"{{{{replica}}}} {p}",
                        )
                        for q, p in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
                    ],
                    unit="s",
                    width=24,
                    height=9,
                    description="From the request's arrival at the gateway to its first streamed event.",
                ),
                Panel(
                    "End-to-end latency",
                    [
                        Query(_quantile(q, "kvgate_e2e_request_latency_seconds", MODEL), p)
                        for q, p in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
                    ],
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Inter-token latency",
                    [
                        Query(_quantile(q, "kvgate_inter_token_latency_seconds", MODEL), p)
                        for q, p in ((0.5, "p50"), (0.99, "p99"))
                    ],
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Routing decision time",
                    [
                        Query(
                            _quantile(0.99, "kvgate_routing_decision_seconds", by="policy"), "{{policy}} p99"
                        )
                    ],
                    unit="s",
                    width=8,
                    description="Prompt blocks, index lookup and policy, per request.",
                ),
            ],
        ),
        Row(
            "Traffic",
            [
                Panel(
                    "Requests by decision reason",
                    [Query(_rate("kvgate_requests_total", MODEL, "reason"), "{{reason}}")],
                    unit="reqps",
                    width=8,
                    stack=True,
                    description="Why each request went where it went; retries count again as 'retry'.",
                ),
                Panel(
                    "Requests by replica",
                    [Query(_rate("kvgate_requests_total", MODEL, "replica"), "{{replica}}")],
                    unit="reqps",
                    width=8,
                    stack=True,
                ),
                Panel(
                    "Responses by status code",
                    [Query(_rate("kvgate_responses_total", MODEL, "code"), "{{code}}")],
                    unit="reqps",
                    width=8,
                    stack=True,
                ),
                Panel(
                    "Upstream errors by kind",
                    [Query(_rate("kvgate_upstream_errors_total", by="kind") + " or vector(0)", "{{kind}}")],
                    unit="reqps",
                    width=12,
                    description="Failed attempts at a replica: connect, timeout, 5xx, broken stream.",
                ),
                Panel(
                    "Prompt tokens",
                    [
                        Query(_rate("kvgate_prompt_tokens_total", MODEL), "prompt"),
                        Query(_rate("kvgate_cached_tokens_total", MODEL), "cached"),
                    ],
                    unit="short",
                    width=12,
                    description="Tokens per second, as the replicas reported them.",
                ),
            ],
        ),
        Row(
            "Load per replica",
            [
                Panel(
                    "In-flight requests",
                    [Query("sum by (replica) (kvgate_inflight_requests)", "{{replica}}")],
                    width=8,
                ),
                Panel(
                    "Queued prefill tokens",
                    [Query("sum by (replica) (kvgate_queued_prefill_tokens)", "{{replica}}")],
                    width=8,
                    description="Uncached prompt tokens sent to a replica that have not started streaming.",
                ),
                Panel(
                    "Routable replicas",
                    [
                        Query("sum(kvgate_replica_healthy)", "routable"),
                        Query("count(kvgate_replica_healthy)", "known"),
                    ],
                    width=8,
                    description="Replicas taking new requests, and all the gateways know of (summed).",
                ),
            ],
        ),
        Row(
            "Prefix index",
            [
                Panel(
                    "Index blocks by replica and tier",
                    [Query("sum by (replica, tier) (kvgate_index_blocks)", "{{replica}} {{tier}}")],
                    width=12,
                    description="The index's model of each replica's cache, per gateway summed.",
                ),
                Panel(
                    "Index evictions by tier",
                    [Query(_rate("kvgate_index_evictions_total", by="tier") + " or vector(0)", "{{tier}}")],
                    unit="short",
                    width=12,
                ),
                Panel(
                    "Index errors by operation",
                    [Query(_rate("kvgate_index_errors_total", by="op") + " or vector(0)", "{{op}}")],
                    unit="ops",
                    width=12,
                    description="Index operations that failed; the gateway routed on without them.",
                ),
                Panel(
                    "KV cache events by kind",
                    [Query(_rate("kvgate_kv_events_total", by="kind"), "{{kind}}")],
                    unit="ops",
                    width=12,
                    description="Events from the replicas' KV event publishers (precise mode only).",
                ),
            ],
        ),
        Row(
            "Shared index (Redis)",
            [
                Panel(
                    "Redis up",
                    [Query("min(kvgate_index_redis_up)")],
                    kind="stat",
                    width=6,
                    max=1,
                    thresholds=[(0, "red"), (1, "green")],
                    description="1 while every gateway's shared index answers.",
                ),
                Panel(
                    "Redis latency",
                    [
                        Query(_quantile(q, "kvgate_index_redis_latency_seconds", by="op"), f"{{{{op}}}} {p}")
                        for q, p in ((0.5, "p50"), (0.99, "p99"))
                    ],
                    unit="s",
                    width=18,
                ),
                Panel(
                    "Lookups that fell back",
                    [Query(_rate("kvgate_index_redis_fallbacks_total"), "fallbacks")],
                    unit="ops",
                    width=8,
                    description="Lookups answered without Redis (timeout or open circuit).",
                ),
                Panel(
                    "Pending writes",
                    [Query("sum(kvgate_index_redis_pending_writes)", "pending")],
                    width=8,
                ),
                Panel(
                    "Dropped writes",
                    [Query(_rate("kvgate_index_redis_dropped_writes_total"), "dropped")],
                    unit="ops",
                    width=8,
                ),
            ],
        ),
    ],
)


# --- the replicas (vLLM's own metrics) -----------------------------------------------------------

ENGINE = 'model_name=~"$model_name"'
REPLICAS = Dashboard(
    uid="kvgate-replicas",
    title="kvgate replicas",
    description="The vLLM replicas' own metrics: queues, KV cache usage, prefix cache hits by tier.",
    variables=[
        Variable("model_name", "Model", "label_values(vllm:num_requests_running, model_name)"),
    ],
    rows=[
        Row(
            "Queues",
            [
                Panel(
                    "Requests running",
                    [Query(f"sum by (instance) (vllm:num_requests_running{{{ENGINE}}})", "{{instance}}")],
                    width=12,
                ),
                Panel(
                    "Requests waiting",
                    [Query(f"sum by (instance) (vllm:num_requests_waiting{{{ENGINE}}})", "{{instance}}")],
                    width=12,
                    description="Queued in the scheduler: what the gateway's load guard steers away from.",
                ),
            ],
        ),
        Row(
            "KV cache",
            [
                Panel(
                    "KV cache usage",
                    [
                        Query(
                            f"max by (instance) (vllm:kv_cache_usage_perc{{{ENGINE}}}"
                            f" or vllm:gpu_cache_usage_perc{{{ENGINE}}})",
                            "{{instance}}",
                        )
                    ],
                    unit="percentunit",
                    max=1,
                    width=12,
                ),
                Panel(
                    "Preemptions",
                    [Query(_rate("vllm:num_preemptions_total", ENGINE, "instance"), "{{instance}}")],
                    unit="ops",
                    width=12,
                    description="Requests evicted from the running batch for lack of KV cache blocks.",
                ),
            ],
        ),
        Row(
            "Prefix cache hits",
            [
                Panel(
                    "GPU prefix cache hit rate by replica",
                    [
                        Query(
                            _ratio(
                                "vllm:prefix_cache_hits_total",
                                "vllm:prefix_cache_queries_total",
                                ENGINE,
                                "instance",
                            ),
                            "{{instance}}",
                        )
                    ],
                    unit="percentunit",
                    max=1,
                    width=12,
                ),
                Panel(
                    "Prefix cache hits by tier",
                    [
                        Query(
                            _ratio("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", ENGINE),
                            "GPU",
                        ),
                        Query(
                            _ratio(
                                "vllm:external_prefix_cache_hits_total",
                                "vllm:external_prefix_cache_queries_total",
                                ENGINE,
                            ),
                            "offloaded (CPU, storage)",
                        ),
                    ],
                    unit="percentunit",
                    max=1,
                    width=12,
                    description="Hits in the engine's own GPU cache, and in the connector's offloaded tiers.",
                ),
                Panel(
                    "Prompt tokens by source",
                    [Query(_rate("vllm:prompt_tokens_by_source_total", ENGINE, "source"), "{{source}}")],
                    width=24,
                    stack=True,
                    description="Computed, served from the local cache, or moved in from an external tier.",
                ),
            ],
        ),
        Row(
            "Latency and throughput",
            [
                Panel(
                    "Time to first token by replica",
                    [
                        Query(
                            _quantile(q, "vllm:time_to_first_token_seconds", ENGINE, "instance"),
                            f"{{{{instance}}}} {p}",
                        )
                        for q, p in ((0.5, "p50"), (0.99, "p99"))
                    ],
                    unit="s",
                    width=12,
                ),
                Panel(
                    "Queue time",
                    [
                        Query(
                            _quantile(0.99, "vllm:request_queue_time_seconds", ENGINE, "instance"),
                            "{{instance}} p99",
                        )
                    ],
                    unit="s",
                    width=12,
                ),
                Panel(
                    "Tokens per second",
                    [
                        Query(_rate("vllm:prompt_tokens_total", ENGINE, "instance"), "{{instance}} prompt"),
                        Query(
                            _rate("vllm:generation_tokens_total", ENGINE, "instance"),
                            "{{instance}} generated",
                        ),
                    ],
                    width=24,
                ),
            ],
        ),
    ],
)

# --- the load test (kvgate swarm's client-side metrics, summed over shards) -----------------------

LOADTEST = Dashboard(
    uid="kvgate-loadtest",
    title="kvgate load test",
    description="What the swarm's clients measured: users, TTFT and the SLO, goodput, hit rate, ceiling.",
    variables=[
        Variable(
            "slo_ttft_s",
            "TTFT SLO (s)",
            default="2",
            description="The TTFT target to draw: the swarm's --slo-ttft.",
        ),
    ],
    rows=[
        Row(
            "Load",
            [
                Panel(
                    "Users",
                    [
                        Query("sum(kvgate_loadtest_users)", "users"),
                        Query("sum(kvgate_loadtest_target_users)", "target"),
                        Query("sum(kvgate_loadtest_subagents)", "sub-agents"),
                    ],
                    width=8,
                    description="Users running (or started) in all shards, and the load mode's target.",
                ),
                Panel(
                    "Requests in flight",
                    [Query("sum(kvgate_loadtest_requests_in_flight)", "in flight")],
                    width=8,
                ),
                Panel(
                    "Finished requests by outcome",
                    [Query(_rate("kvgate_loadtest_requests_total", by="outcome"), "{{outcome}}")],
                    unit="reqps",
                    width=8,
                    stack=True,
                ),
            ],
        ),
        Row(
            "Latency against the SLO",
            [
                Panel(
                    "Time to first token",
                    [
                        *(
                            Query(_quantile(q, "kvgate_loadtest_ttft_seconds"), p)
                            for q, p in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
                        ),
                        Query("vector($slo_ttft_s)", "SLO"),
                    ],
                    unit="s",
                    width=12,
                    height=9,
                    description="As the clients saw it, with the SLO the run was judged by.",
                ),
                Panel(
                    "Share of requests within the TTFT SLO",
                    [
                        Query(
                            _rate("kvgate_loadtest_goodput_requests_total")
                            + " / "
                            + _rate("kvgate_loadtest_requests_total"),
                            "goodput share",
                        )
                    ],
                    unit="percentunit",
                    max=1,
                    width=12,
                    height=9,
                    description="Successful requests that met the SLO, of all finished requests.",
                ),
                Panel(
                    "End-to-end latency",
                    [
                        Query(_quantile(q, "kvgate_loadtest_e2e_latency_seconds"), p)
                        for q, p in ((0.5, "p50"), (0.99, "p99"))
                    ],
                    unit="s",
                    width=12,
                ),
                Panel(
                    "Inter-token latency",
                    [
                        Query(_quantile(q, "kvgate_loadtest_inter_token_latency_seconds"), p)
                        for q, p in ((0.5, "p50"), (0.99, "p99"))
                    ],
                    unit="s",
                    width=12,
                ),
            ],
        ),
        Row(
            "Goodput",
            [
                Panel(
                    "Goodput",
                    [
                        Query(_rate("kvgate_loadtest_goodput_requests_total"), "within SLO"),
                        Query(_rate("kvgate_loadtest_requests_total", 'outcome="ok"'), "succeeded"),
                    ],
                    unit="reqps",
                    width=12,
                ),
                Panel(
                    "Output tokens per second",
                    [Query(_rate("kvgate_loadtest_output_tokens_total"), "output")],
                    width=12,
                ),
            ],
        ),
        Row(
            "Prefix cache",
            [
                Panel(
                    "Hit rate since the start",
                    [
                        Query(
                            "sum(kvgate_loadtest_cached_tokens_total)"
                            " / sum(kvgate_loadtest_prompt_tokens_total)"
                        )
                    ],
                    unit="percentunit",
                    kind="stat",
                    width=6,
                    max=1,
                ),
                Panel(
                    "Ceiling since the start",
                    [
                        Query(
                            "sum(kvgate_loadtest_ceiling_tokens_total)"
                            " / sum(kvgate_loadtest_expected_prompt_tokens_total)"
                        )
                    ],
                    unit="percentunit",
                    kind="stat",
                    width=6,
                    max=1,
                    description="Prompt tokens in blocks sent earlier in the run: all a cache could serve.",
                ),
                Panel(
                    "Hit rate against the ceiling",
                    [
                        Query(
                            _ratio(
                                "kvgate_loadtest_cached_tokens_total", "kvgate_loadtest_prompt_tokens_total"
                            ),
                            "hit rate",
                        ),
                        Query(
                            _ratio(
                                "kvgate_loadtest_ceiling_tokens_total",
                                "kvgate_loadtest_expected_prompt_tokens_total",
                            ),
                            "ceiling",
                        ),
                    ],
                    unit="percentunit",
                    max=1,
                    width=12,
                    description="Cached prompt tokens the server reported, and the workload's ceiling.",
                ),
            ],
        ),
    ],
)

DASHBOARD_SET = {"gateway": GATEWAY, "replicas": REPLICAS, "loadtest": LOADTEST}


# --- the JSON model --------------------------------------------------------------------------------


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    steps = [
        {"color": color, "value": None if i == 0 else value}
        for i, (value, color) in enumerate(panel.thresholds)
    ]
    defaults["thresholds"] = {"mode": "absolute", "steps": steps or [{"color": "green", "value": None}]}
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 0,
            "showPoints": "never",
            "spanNulls": True,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def _variable_json(variable: Variable) -> dict[str, Any]:
    if not variable.query:
        return {
            "name": variable.name,
            "label": variable.label,
            "description": variable.description,
            "type": "custom",
            "query": variable.default,
            "current": {"text": variable.default, "value": variable.default},
            "options": [{"text": variable.default, "value": variable.default, "selected": True}],
            "hide": 0,
        }
    return {
        "name": variable.name,
        "label": variable.label,
        "description": variable.description,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": variable.query,
        "query": {"query": variable.query, "refId": variable.name},
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    datasource_variable = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "options": [],
        "refresh": 1,
        "regex": "",
    }
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["kvgate"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [datasource_variable, *(_variable_json(v) for v in dashboard.variables)]},
        "panels": panels,
    }


def expected_files() -> dict[str, str]:
    return {
        f"{name}.json": json.dumps(dashboard_json(d), indent=2) + "\n" for name, d in DASHBOARD_SET.items()
    }


def differences(directory: Path = DASHBOARDS) -> list[str]:
    expected = expected_files()
    present = {path.name: path.read_text() for path in directory.glob("*.json")} if directory.exists() else {}
    problems = [f"{name}: missing" for name in sorted(expected.keys() - present.keys())]
    problems += [f"{name}: not written by this script" for name in sorted(present.keys() - expected.keys())]
    problems += [
        f"{name}: differs" for name in sorted(expected) if name in present and present[name] != expected[name]
    ]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the files are current")
    args = parser.parse_args()
    if args.check:
        problems = differences()
        for problem in problems:
            print(f"{DASHBOARDS}/{problem}", file=sys.stderr)
        return 1 if problems else 0
    DASHBOARDS.mkdir(parents=True, exist_ok=True)
    for name, text in expected_files().items():
        (DASHBOARDS / name).write_text(text)
    print(f"wrote {len(DASHBOARD_SET)} dashboards into {DASHBOARDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
