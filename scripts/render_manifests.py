"""Render the Helm chart's default install into manifests/, for `kubectl apply -k manifests/`.

    python scripts/render_manifests.py           # rewrite manifests/
    python scripts/render_manifests.py --check   # exit 1 if manifests/ is not what the chart renders

One file per chart template, and a kustomization.yaml listing them. The gateway reads its namespace
from the downward API and a replacement keeps the RoleBinding's subject in the ServiceAccount's
namespace, so an overlay may move everything to another namespace. The test suite runs --check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from scripts.helm_chart import ROOT, objects, render

MANIFESTS = ROOT / "manifests"
RELEASE = "kvgate"
NAMESPACE = "kvgate"
HEADER = (
    "# Generated from charts/kvgate (default values, release {release}) by scripts/render_manifests.py.\n"
    "# Do not edit: change the chart and render again, or patch these in a kustomize overlay.\n"
)


def _kustomization(resources: list[str], rendered: dict[str, str]) -> str:
    found = objects(rendered)
    account = next(obj for obj in found if obj["kind"] == "ServiceAccount")["metadata"]["name"]
    binding = next(obj for obj in found if obj["kind"] == "RoleBinding")["metadata"]["name"]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": resources,
        "replacements": [
            {
                "source": {"kind": "ServiceAccount", "name": account, "fieldPath": "metadata.namespace"},
                "targets": [
                    {
                        "select": {"kind": "RoleBinding", "name": binding},
                        "fieldPaths": [f"subjects.[name={account}].namespace"],
                    }
                ],
            }
        ],
    }
    return HEADER.format(release=RELEASE) + yaml.safe_dump(kustomization, sort_keys=False)


def expected_files() -> dict[str, str]:
    """File name in manifests/ -> its content."""
    rendered = render({}, release=RELEASE, namespace=NAMESPACE)
    files: dict[str, str] = {}
    for path in sorted(rendered):
        text = rendered[path].strip()
        if path.endswith("NOTES.txt") or not any(doc for doc in yaml.safe_load_all(text)):
            continue
        files[Path(path).name] = HEADER.format(release=RELEASE) + text + "\n"
    files["kustomization.yaml"] = _kustomization(sorted(files), rendered)
    return files


def differences(directory: Path = MANIFESTS) -> list[str]:
    expected = expected_files()
    present = {path.name: path.read_text() for path in directory.glob("*.yaml")} if directory.exists() else {}
    problems = [f"{name}: missing" for name in sorted(expected.keys() - present.keys())]
    problems += [f"{name}: not rendered by the chart" for name in sorted(present.keys() - expected.keys())]
    problems += [
        f"{name}: differs" for name in sorted(expected) if name in present and present[name] != expected[name]
    ]
    return problems


def write(directory: Path = MANIFESTS) -> None:
    directory.mkdir(exist_ok=True)
    expected = expected_files()
    for stale in directory.glob("*.yaml"):
        if stale.name not in expected:
            stale.unlink()
    for name, text in expected.items():
        (directory / name).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether manifests/ is current")
    args = parser.parse_args()
    if args.check:
        problems = differences()
        for problem in problems:
            print(f"manifests/{problem}", file=sys.stderr)
        if problems:
            print("run: python scripts/render_manifests.py", file=sys.stderr)
        return 1 if problems else 0
    write()
    print(f"rendered {len(expected_files())} files into {MANIFESTS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
