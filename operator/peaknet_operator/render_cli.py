"""`peaknet-operator render -f RESOURCE.yaml [-o yaml|json] [-n NAMESPACE]`: every child the
operator would create for a PeakNetPipeline, printed like `helm template`, so an admin can
review it, a GitOps pipeline can diff it, and the tests validate exactly this output.

The spec goes through the operator's own acceptance (decisions.accept: parse_spec and the
sizing problems); a refused spec prints one line per problem, each naming its field, and
exits 2. The children are what the reconcile creates: the resource's labels (kopf.adopt),
its namespace, and the RayCluster's creation annotation. Left out: the owner reference,
whose uid exists only once the API server has stored the resource.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from .spec import GROUP, VERSION

KIND = "PeakNetPipeline"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="peaknet-operator render", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-f", "--filename", required=True, help="the PeakNetPipeline manifest")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    parser.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace of the resource (default: its metadata.namespace, else 'default')",
    )
    return parser.parse_args(argv)


def children(resource: dict[str, Any], namespace: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(children, problems): what the reconcile would create, or why it would create nothing.
    Pure: no API call."""
    import kopf

    from .decisions import accept, creation_annotations
    from .render import render_all, restart_fingerprint

    meta = resource.get("metadata") or {}
    if resource.get("kind") != KIND or resource.get("apiVersion") != f"{GROUP}/{VERSION}":
        found = f"{resource.get('apiVersion')} {resource.get('kind')}"
        return [], [f"not a {GROUP}/{VERSION} {KIND}: {found}"]
    if not meta.get("name"):
        return [], ["metadata.name is required"]
    spec, sizes, problems, _ = accept(resource.get("spec"))
    if problems:
        return [], problems
    rendered = render_all(meta["name"], namespace, spec, sizes)
    fingerprint = restart_fingerprint(rendered)
    for child in rendered:
        # What kopf.adopt does besides the owner reference (the reconcile calls adopt).
        kopf.harmonize_naming(child, name=meta["name"])
        kopf.adjust_namespace(child, namespace=namespace)
        kopf.label(child, labels=meta.get("labels") or {})
        annotations = creation_annotations(child["kind"], fingerprint)
        if annotations:
            child["metadata"]["annotations"] = {
                **child["metadata"].get("annotations", {}),
                **annotations,
            }
    return rendered, []


def dump(docs: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2) + "\n"
    return "".join(f"---\n{yaml.safe_dump(doc, sort_keys=False)}" for doc in docs)


def main(argv: list[str]) -> int:
    """Exit status: 0 rendered; 2 the manifest or its spec is refused."""
    args = parse_args(argv)
    try:
        resource = yaml.safe_load(Path(args.filename).read_text())
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args.filename}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(resource, dict):
        print(f"{args.filename}: not a {KIND} manifest", file=sys.stderr)
        return 2
    namespace = args.namespace or (resource.get("metadata") or {}).get("namespace") or "default"
    docs, problems = children(resource, namespace)
    if problems:
        print(f"{args.filename}: the operator would not apply this spec:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    sys.stdout.write(dump(docs, args.output))
    return 0
