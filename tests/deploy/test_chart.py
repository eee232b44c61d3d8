"""The Helm chart, rendered and linted by Helm's own library (helm-python-sdk), validated by schema.

Every rendered object is validated, strictly (unknown fields are errors), against the Kubernetes API
schemas kubernetes-validate ships for 1.29 and for the newest version it has. The Prometheus
Operator's kinds have no schema there; they are checked for the fields the operator requires. The
gateway's configuration file the chart writes is loaded by the gateway's own config loader.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from gateway.config import load_config
from scripts.helm_chart import CHART, PROMETHEUS_OPERATOR_API, lint, load_values, objects, render

VALUE_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUE_SETS = {"defaults": {}} | {
    path.name.removesuffix("-values.yaml"): load_values(path) for path in VALUE_FILES
}
KUBE_VERSIONS = ["1.29.0", latest_version()]
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


def rendered_objects(values: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    return objects(render(values, **options))


def of_kind(found: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in found if obj["kind"] == kind]


def pod_specs(found: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for obj in found:
        if obj["kind"] in WORKLOAD_KINDS:
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
    return specs


def gateway_config_of(found: list[dict[str, Any]], tmp_path: Path):
    (configmap,) = [o for o in of_kind(found, "ConfigMap") if "config.yaml" in o["data"]]
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    return load_config(path, environ={})


def test_the_everything_file_turns_every_option_on() -> None:
    """Each toggle in values.yaml that defaults to off is on in ci/everything-values.yaml."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    everything = VALUE_SETS["everything"]

    def off_toggles(tree: dict[str, Any], path: str = "") -> list[str]:
        found = []
        for key, value in tree.items():
            if isinstance(value, dict):
                found += off_toggles(value, f"{path}{key}.")
            elif key in ("enabled", "restrictEgress") and value is False:
                found.append(f"{path}{key}")
        return found

    def lookup(tree: dict[str, Any], dotted: str) -> Any:
        for key in dotted.split("."):
            tree = tree.get(key, {}) if isinstance(tree, dict) else {}
        return tree

    assert off_toggles(defaults), "values.yaml has toggles to check"
    assert [toggle for toggle in off_toggles(defaults) if lookup(everything, toggle) is not True] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_reports_nothing(name: str, kube_version: str) -> None:
    report = lint(VALUE_SETS[name], kube_version=f"v{kube_version}")
    assert (report["messages"], report["errors"]) == ([], [])


def _check_operator_object(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == PROMETHEUS_OPERATOR_API
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    spec = obj["spec"]
    assert spec["selector"]["matchLabels"], "an empty selector would scrape everything"
    endpoints = spec["endpoints"] if obj["kind"] == "ServiceMonitor" else spec["podMetricsEndpoints"]
    assert endpoints and set(spec) <= {"selector", "namespaceSelector", "endpoints", "podMetricsEndpoints"}
    for endpoint in endpoints:
        assert isinstance(endpoint["port"], str) and endpoint["path"].startswith("/")
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert all(isinstance(name, str) for name in spec.get("namespaceSelector", {}).get("matchNames", []))


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_validates_against_the_kubernetes_schemas(name: str, kube_version: str) -> None:
    found = rendered_objects(
        VALUE_SETS[name], api_versions=[PROMETHEUS_OPERATOR_API], kube_version=f"v{kube_version}"
    )
    assert found
    for obj in found:
        if obj["kind"] in OPERATOR_KINDS:
            _check_operator_object(obj)
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in found]
    assert len(names) == len(set(names)), "two objects share a kind and name"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_gateway_loads_the_config_the_chart_writes(name: str, tmp_path: Path) -> None:
    values = VALUE_SETS[name]
    config = gateway_config_of(rendered_objects(values), tmp_path)
    assert config.port == 8080 and config.host == "0.0.0.0"
    expected_kind = values.get("discovery", {}).get("kind", "kubernetes")
    if values.get("simulator", {}).get("enabled"):
        expected_kind = "kubernetes"
    assert config.discovery.kind == expected_kind
    assert config.precise.enabled == values.get("kvEvents", {}).get("enabled", False)


def test_operator_objects_need_the_operator_api() -> None:
    everything = VALUE_SETS["everything"]
    without = {obj["kind"] for obj in rendered_objects(everything)}
    with_api = {obj["kind"] for obj in rendered_objects(everything, api_versions=[PROMETHEUS_OPERATOR_API])}
    assert not without & OPERATOR_KINDS
    assert with_api >= OPERATOR_KINDS


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_container_is_hardened(name: str) -> None:
    for workload, spec in pod_specs(rendered_objects(VALUE_SETS[name])):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, workload
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            where = f"{workload}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            seccomp = context.get("seccompProfile") or pod.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert "resources" in container and container["resources"].get("requests"), where


def test_gateway_pods_probe_health_and_readiness_and_leave_gracefully() -> None:
    (deployment,) = [
        d for d in of_kind(rendered_objects({}), "Deployment") if d["metadata"]["name"] == "kvgate"
    ]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    config = yaml.safe_load(of_kind(rendered_objects({}), "ConfigMap")[0]["data"]["config.yaml"])
    assert spec["terminationGracePeriodSeconds"] >= pause + config["shutdown_grace_s"]
    assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert all(c["labelSelector"]["matchLabels"] == labels for c in spec["topologySpreadConstraints"])
    assert container["args"] == ["serve", "--config", "/etc/kvgate/config.yaml"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/etc/kvgate/config.yaml"}


@pytest.mark.parametrize(
    ("values", "resource"),
    [({}, "endpointslices"), (VALUE_SETS["pod-selector"], "pods")],
    ids=["service", "selector"],
)
def test_rbac_grants_discovery_reads_in_its_namespace_only(values: dict[str, Any], resource: str) -> None:
    found = rendered_objects(values)
    assert not of_kind(found, "ClusterRole") and not of_kind(found, "ClusterRoleBinding")
    (role,) = of_kind(found, "Role")
    (binding,) = of_kind(found, "RoleBinding")
    namespace = values.get("discovery", {}).get("namespace") or "kvgate"
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    (rule,) = role["rules"]
    assert rule["resources"] == [resource] and sorted(rule["verbs"]) == ["get", "list", "watch"]
    assert rule["apiGroups"] == (["discovery.k8s.io"] if resource == "endpointslices" else [""])
    (account,) = of_kind(found, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kvgate"}
    ]


def test_discovery_watches_the_gateway_namespace_unless_told_otherwise(tmp_path: Path) -> None:
    """The namespace comes from the downward API, so plain manifests work in any namespace."""
    found = rendered_objects({})
    (deployment,) = of_kind(found, "Deployment")
    env = {item["name"]: item for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KVGATE_DISCOVERY__NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert (
        "namespace" not in yaml.safe_load(of_kind(found, "ConfigMap")[0]["data"]["config.yaml"])["discovery"]
    )

    elsewhere = rendered_objects(VALUE_SETS["pod-selector"])
    (deployment,) = of_kind(elsewhere, "Deployment")
    assert "KVGATE_DISCOVERY__NAMESPACE" not in str(deployment)
    assert gateway_config_of(elsewhere, tmp_path).discovery.namespace == "inference"


def test_dns_discovery_needs_no_api_access() -> None:
    found = rendered_objects(VALUE_SETS["external-redis"])
    assert not of_kind(found, "Role") and not of_kind(found, "RoleBinding")
    (deployment,) = of_kind(found, "Deployment")
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_secrets_are_referenced_never_rendered(tmp_path: Path) -> None:
    found = rendered_objects(VALUE_SETS["everything"])
    assert not of_kind(found, "Secret")
    (gateway,) = [d for d in of_kind(found, "Deployment") if d["metadata"]["name"] == "kvgate-all"]
    spec = gateway["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert env == {"KVGATE_UPSTREAM__API_KEY": {"name": "vllm-api-key", "key": "key"}}
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert secret_volumes == {
        "api-keys": "kvgate-api-keys",
        "admin-token": "kvgate-admin",
        "redis-password": "kvgate-redis",
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all("subPath" not in mounts[name] for name in secret_volumes), "rotated Secrets must reach the Pod"
    config = gateway_config_of(found, tmp_path)
    assert config.auth.api_keys_file == mounts["api-keys"]["mountPath"] + "/keys"
    assert config.auth.admin_token_file == mounts["admin-token"]["mountPath"] + "/token"
    assert config.index.redis.password_file == mounts["redis-password"]["mountPath"] + "/password"
    assert config.index.redis.url == "redis://kvgate-all-redis:6379/0"
    (redis,) = [d for d in of_kind(found, "Deployment") if d["metadata"]["name"] == "kvgate-all-redis"]
    redis_env = redis["spec"]["template"]["spec"]["containers"][0]["env"]
    assert redis_env == [
        {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "kvgate-redis", "key": "password"}}}
    ]


def test_external_redis_over_tls_mounts_the_client_certificates(tmp_path: Path) -> None:
    found = rendered_objects(VALUE_SETS["external-redis"])
    config = gateway_config_of(found, tmp_path)
    assert config.index.backend == "redis" and config.index.redis.url.startswith("rediss://")
    (deployment,) = of_kind(found, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["redis-tls"]["secret"]["secretName"] == "redis-client-tls"
    mounts = {
        m["name"]: m["mountPath"]
        for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert config.index.redis.tls_ca_file == mounts["redis-tls"] + "/ca.crt"
    assert config.index.redis.key_prefix == "kvg-prod", "gateway.config merges over what the chart sets"


def test_the_config_checksum_rolls_the_gateway_when_the_config_changes() -> None:
    def checksum(values: dict[str, Any]) -> str:
        (deployment,) = of_kind(rendered_objects(values), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"gateway": {"policy": "round_robin"}})


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"discovery": {"service": ""}}, "set discovery.service"),
        ({"discovery": {"kind": "dns"}}, "discovery.dnsName and discovery.port"),
        ({"discovery": {"kind": "static"}}, "gateway.config.replicas"),
        ({"index": {"backend": "redis"}}, "index.redis.url"),
        ({"index": {"redis": {"tls": {"secretName": "x"}}}}, "external Redis"),
        ({"gateway": {"polcy": "affinity"}}, "polcy"),
        ({"gateway": {"policy": "fastest"}}, "policy"),
        ({"discovery": {"kind": "consul"}}, "kind"),
        ({"gateway": {"terminationGracePeriodSeconds": 20}}, "terminationGracePeriodSeconds"),
    ],
)
def test_values_that_cannot_work_are_refused_with_a_reason(values: dict[str, Any], complaint: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError, match=complaint):
        render(values)


def test_static_replicas_pass_through_to_the_gateway(tmp_path: Path) -> None:
    values = {
        "discovery": {"kind": "static"},
        "gateway": {"config": {"replicas": ["http://vllm-0.vllm:8000"]}},
    }
    found = rendered_objects(values)
    config = gateway_config_of(found, tmp_path)
    assert [replica.url for replica in config.replicas] == ["http://vllm-0.vllm:8000"]
    assert not of_kind(found, "Role")


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar() -> None:
    files = {
        f"kvgate-{path.stem}.json": json.loads(path.read_text())
        for path in (CHART / "dashboards").glob("*.json")
    }
    assert files
    found = rendered_objects(VALUE_SETS["everything"])
    maps = [o for o in of_kind(found, "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    shipped = {name: json.loads(text) for m in maps for name, text in m["data"].items()}
    assert shipped == files
    assert {m["metadata"]["namespace"] for m in maps} == {"monitoring"}
    assert all(m["metadata"]["annotations"] == {"grafana_folder": "kvgate"} for m in maps)

    relabelled = rendered_objects({"dashboards": {"label": "dashboards.example/load", "labelValue": "yes"}})
    maps = [
        o for o in of_kind(relabelled, "ConfigMap") if "dashboards.example/load" in o["metadata"]["labels"]
    ]
    assert len(maps) == len(files) and all(
        m["metadata"]["labels"]["dashboards.example/load"] == "yes" for m in maps
    )
    assert len(of_kind(rendered_objects({"dashboards": {"enabled": False}}), "ConfigMap")) == 1


def test_the_values_file_in_the_deploy_guide_renders_and_validates(tmp_path: Path) -> None:
    guide = (CHART.parents[1] / "docs" / "deploy.md").read_text()
    blocks = [block for block in guide.split("```yaml\n")[1:] if block.startswith("# kvgate-values.yaml")]
    (block,) = blocks
    values = yaml.safe_load(block.split("```")[0])
    found = rendered_objects(values)
    for obj in found:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)
    config = gateway_config_of(found, tmp_path)
    assert config.discovery.service == "vllm" and config.precise.enabled and config.index.backend == "redis"


def test_the_demo_fleet_is_what_the_gateway_discovers(tmp_path: Path) -> None:
    found = rendered_objects(VALUE_SETS["everything"])
    config = gateway_config_of(found, tmp_path)
    (service,) = [s for s in of_kind(found, "Service") if s["metadata"]["name"] == "kvgate-all-sim"]
    (fleet,) = [d for d in of_kind(found, "Deployment") if d["metadata"]["name"] == "kvgate-all-sim"]
    assert config.discovery.kind == "kubernetes" and config.discovery.service == "kvgate-all-sim"
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert service_ports == {
        config.discovery.port_name,
        config.discovery.kv_events_port_name,
        config.discovery.kv_events_replay_port_name,
    }, "EndpointSlices carry only the Service's ports: the KV events ones must be there"
    assert service["spec"]["selector"] == fleet["spec"]["selector"]["matchLabels"]
    (container,) = fleet["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["sim", "--replicas"] and "0.0.0.0" in container["args"]
    assert {port["name"] for port in container["ports"]} == service_ports
    assert fleet["spec"]["replicas"] == 4


def test_the_load_test_is_an_indexed_job_of_swarm_shards() -> None:
    found = rendered_objects(VALUE_SETS["everything"], api_versions=[PROMETHEUS_OPERATOR_API])
    (job,) = of_kind(found, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "swarm"
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags["--shard"] == "$(JOB_COMPLETION_INDEX)/4"
    assert flags["--endpoint"] == "http://kvgate-all:80"
    assert flags["--output"] == f"/results/{job['metadata']['name']}/shard-$(JOB_COMPLETION_INDEX)"
    assert flags["--metrics-host"] == "0.0.0.0" and flags["--metrics-port"] == "9400"
    assert args[-8:] == ["--users", "200", "--duration", "900", "--slo-ttft", "1.5", "--seed", "7"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert flags["--workload-config"].startswith(mounts["workload"] + "/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["results"]["persistentVolumeClaim"] == {"claimName": "kvgate-loadtest-results"}
    (workload,) = [
        c
        for c in of_kind(found, "ConfigMap")
        if c["metadata"]["name"] == volumes["workload"]["configMap"]["name"]
    ]
    assert yaml.safe_load(workload["data"]["workload.yaml"])["agents"][0]["name"] == "coder"
    (wait,) = pod["initContainers"]
    assert wait["command"][-2:] == ["http://kvgate-all:80", "600"]

    monitors = {m["metadata"]["name"]: m for m in of_kind(found, "PodMonitor")}
    selector = monitors["kvgate-all-loadtest"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    (policy,) = [p for p in of_kind(found, "NetworkPolicy") if p["metadata"]["name"] == "kvgate-all"]
    assert {"podSelector": {"matchLabels": selector}} in policy["spec"]["ingress"][0]["from"]


def test_a_changed_load_test_is_a_new_job() -> None:
    def job_name(args: list[str]) -> str:
        (job,) = of_kind(rendered_objects({"loadtest": {"enabled": True, "args": args}}), "Job")
        return job["metadata"]["name"]

    assert job_name(["--users", "10"]) == job_name(["--users", "10"])
    assert job_name(["--users", "10"]) != job_name(["--users", "20"])


def _parse(module, args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(args)


def test_the_chart_runs_kvgate_sim_with_flags_it_accepts() -> None:
    from loadtest.sim import cli as sim_cli

    found = rendered_objects(VALUE_SETS["everything"])
    (fleet,) = [d for d in of_kind(found, "Deployment") if d["metadata"]["name"] == "kvgate-all-sim"]
    args = fleet["spec"]["template"]["spec"]["containers"][0]["args"]
    sim = _parse(sim_cli, args[1:])
    assert (sim.replicas, sim.host, sim.port) == (1, "0.0.0.0", 8000)
    assert (sim.kv_events_port, sim.kv_events_replay_port, sim.model) == (5557, 5558, "sim-llama3-8b")
    assert sim.dram_gib == 32


def test_the_chart_runs_kvgate_swarm_with_flags_it_accepts() -> None:
    swarm_cli = pytest.importorskip("loadtest.swarm.cli", reason="kvgate swarm is not on this branch yet")
    (job,) = of_kind(rendered_objects(VALUE_SETS["everything"]), "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    swarm = _parse(swarm_cli, [arg.replace("$(JOB_COMPLETION_INDEX)", "3") for arg in args[1:]])
    assert (swarm.shard, swarm.metrics_host, swarm.metrics_port) == ("3/4", "0.0.0.0", 9400)
    assert swarm.output_dir == f"/results/{job['metadata']['name']}/shard-3"
