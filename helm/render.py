"""Render (and optionally lint) the chart without a helm binary: Helm's own Go SDK via helm-python-sdk.

    .venv/bin/python helm/render.py [-f values.yaml ...] [--set key=value ...] [-n NAMESPACE] [--name RELEASE]
        [--lint] [--validate]

Prints the manifests as one multi-document YAML stream (pipe it to `kubectl apply -f -` where no helm
binary is at hand; NOTES.txt goes to stderr). --validate checks each core manifest against the bundled
Kubernetes schemas (kubernetes-validate; CRDs such as RayCluster are only reported).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "autoresearch-farm"


def _merge(base: dict, top: dict) -> dict:
    for key, value in top.items():
        base[key] = (
            _merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helm/render.py", description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--values", action="append", default=[], help="a values file (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="key=value, Helm's --set syntax (repeatable)")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--name", default="farm", help="release name")
    parser.add_argument("--lint", action="store_true", help="also lint (strict); fail on warnings")
    parser.add_argument("--validate", action="store_true", help="also validate against Kubernetes schemas")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the SDK's note about the dashboard symlink
    import helm_python as helm

    values: dict = {}
    for path in args.values:
        _merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for item in args.set:
        _merge(values, helm.parse_set_string(item))
    chart = helm.Chart.load(CHART)
    try:
        rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    except helm.HelmError as exc:
        print(f"helm/render.py: {exc}", file=sys.stderr)
        return 1
    docs = [
        d for path, text in sorted(rendered.items()) if not path.endswith(".txt") for d in yaml.safe_load_all(text) if d
    ]
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    print(rendered.get(f"{CHART.name}/templates/NOTES.txt", ""), file=sys.stderr)
    failed = False
    if args.lint:
        report = helm.lint(CHART, values, strict=True, namespace=args.namespace)
        for message in report["messages"]:
            print(f"lint [{message['severity']}] {message['path']}: {message['error']}", file=sys.stderr)
        failed |= bool(report["errors"]) or any(m["severity"] >= 2 for m in report["messages"])
    if args.validate:
        import kubernetes_validate

        for doc in docs:
            what = f"{doc['kind']}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                print(
                    f"validate: {what}: no bundled schema ({doc['apiVersion']} is a CRD): not checked", file=sys.stderr
                )
            except kubernetes_validate.ValidationError as exc:
                print(f"validate: {what}: {exc.message}", file=sys.stderr)
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
