"""The Helm chart under helm/tollgate, rendered and checked offline with the
real Helm library (helm-python-sdk, libhelm v4) and kubernetes-validate.

    chart.py lint
    chart.py render   --values-json '{...}' [--api-versions monitoring.coreos.com/v1]
                      [--name tollgate] [--namespace default]
    chart.py validate --values-json '{...}' [same options]

render and validate also take `--set a.b=c` (repeated), read by Helm's own
--set parser and merged over --values-json, as `helm install --set` does.

Each prints one JSON object on stdout:
    lint     {"messages": [{"severity", "path", "error"}], "errors": [...]}
    render   {"manifests": [{...}, ...]}: every YAML document of every
             template, hooks and tests included, as plain JSON objects
    validate {"results": [{"kind", "name", "ok", "checked_by", "error"}]}
On a values or template error: {"error": "<Helm's message>"}, exit status 1.
validate exits 1 when any manifest fails.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml
from helm_python import _native

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "tollgate"
KUBE_VERSION = "1.37.0"


def render(values: dict, api_versions: list[str], name: str, namespace: str) -> list[dict]:
    """Renders as `helm install` would: the Python wrapper's render cannot
    pass capabilities, so call the native function with the API versions and
    the Kubernetes version. It checks the values against values.schema.json
    first, as install does (raises helm.HelmValuesError)."""
    with helm.Chart.load(CHART) as chart:
        options = {
            "name": name,
            "namespace": namespace,
            "is_install": True,
            "api_versions": api_versions,
            "kube_version": f"v{KUBE_VERSION}",
        }
        rendered = json.loads(
            _native.call_string(
                "helm_render", chart._raw(), json.dumps(values), json.dumps(options)
            )
        )
    manifests = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for document in yaml.safe_load_all(rendered[path]):
            if document:
                manifests.append(document)
    return manifests


def check_service_monitor(manifest: dict) -> None:
    """kubernetes-validate ships no schemas for CRDs such as
    prometheus-operator's ServiceMonitor: check by hand the fields
    prometheus-operator needs to find and scrape the pods."""
    assert manifest.get("apiVersion") == "monitoring.coreos.com/v1", "apiVersion"
    metadata = manifest.get("metadata") or {}
    assert isinstance(metadata.get("name"), str) and metadata["name"], "metadata.name"
    spec = manifest.get("spec") or {}
    labels = (spec.get("selector") or {}).get("matchLabels")
    assert isinstance(labels, dict) and labels, "spec.selector.matchLabels"
    assert all(isinstance(v, str) for v in labels.values()), "spec.selector.matchLabels values"
    endpoints = spec.get("endpoints")
    assert isinstance(endpoints, list) and endpoints, "spec.endpoints"
    for endpoint in endpoints:
        assert isinstance(endpoint.get("port"), str) and endpoint["port"], "spec.endpoints[].port"
        assert str(endpoint.get("path", "")).startswith("/"), "spec.endpoints[].path"
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}
    assert not unknown, f"unknown spec fields {sorted(unknown)}"


CUSTOM_CHECKS = {("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor}


def validate(manifest: dict) -> dict:
    kind = manifest.get("kind")
    result = {"kind": kind, "name": (manifest.get("metadata") or {}).get("name")}
    custom = CUSTOM_CHECKS.get((manifest.get("apiVersion"), kind))
    try:
        if custom:
            result["checked_by"] = "chart.py"
            custom(manifest)
        else:
            result["checked_by"] = f"kubernetes-validate {KUBE_VERSION} strict"
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return {**result, "ok": False, "error": f"{path}: {e.message}"}
    except (AssertionError, kubernetes_validate.SchemaNotFoundError) as e:
        return {**result, "ok": False, "error": str(e) or repr(e)}
    return {**result, "ok": True}


def merge(into: dict, values: dict) -> None:
    """Merges `values` into `into`, maps key by key (as Helm merges --set)."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lint")
    for command in ("render", "validate"):
        p = sub.add_parser(command)
        p.add_argument("--values-json", default="{}")
        p.add_argument("--api-versions", action="append", default=[])
        p.add_argument("--name", default="tollgate")
        p.add_argument("--namespace", default="default")
        p.add_argument("--set", action="append", default=[], dest="sets")
    args = parser.parse_args()

    if args.command == "lint":
        report = helm.lint(CHART, None, strict=True, kube_version=f"v{KUBE_VERSION}")
        print(json.dumps({"messages": report["messages"], "errors": report["errors"]}))
        return 0

    try:
        values = json.loads(args.values_json)
        for expression in args.sets:
            merge(values, helm.parse_set_string(expression))
        manifests = render(values, args.api_versions, args.name, args.namespace)
    except helm.HelmError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    if args.command == "render":
        print(json.dumps({"manifests": manifests}))
        return 0
    results = [validate(m) for m in manifests]
    print(json.dumps({"results": results}))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
