"""manifests/ is the chart's default install, rendered: kept in sync, and complete for `kubectl apply -k`."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from scripts.render_manifests import MANIFESTS, differences, write


def test_manifests_are_what_the_chart_renders() -> None:
    assert differences() == [], "run: python scripts/render_manifests.py"


def test_a_stale_or_stray_manifest_is_reported(tmp_path: Path) -> None:
    write(tmp_path)
    assert differences(tmp_path) == []
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("replicas: 2", "replicas: 3"))
    (tmp_path / "extra.yaml").write_text("kind: ConfigMap\n")
    (tmp_path / "service.yaml").unlink()
    assert differences(tmp_path) == [
        "service.yaml: missing",
        "extra.yaml: not rendered by the chart",
        "deployment.yaml: differs",
    ]


def test_the_kustomization_lists_every_manifest_and_its_replacement_has_targets() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = sorted(path.name for path in MANIFESTS.glob("*.yaml") if path.name != "kustomization.yaml")
    assert kustomization["resources"] == files
    found = [doc for name in files for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]
    kinds_and_names = {(doc["kind"], doc["metadata"]["name"]) for doc in found}
    for replacement in kustomization["replacements"]:
        assert (replacement["source"]["kind"], replacement["source"]["name"]) in kinds_and_names
        for target in replacement["targets"]:
            assert (target["select"]["kind"], target["select"]["name"]) in kinds_and_names


@pytest.mark.parametrize("kube_version", ["1.29.0", latest_version()])
def test_every_manifest_validates(kube_version: str) -> None:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kubernetes_validate.validate(doc, kube_version, strict=True)
