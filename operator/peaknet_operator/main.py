"""`peaknet-operator`: run the PeakNetPipeline operator (kopf).

    peaknet-operator                       # every namespace
    peaknet-operator --namespace beamtime  # only these namespaces (repeat the option)
    peaknet-operator --standalone          # one replica, no peering with other operators
    peaknet-operator --liveness http://0.0.0.0:8080/healthz   # kopf's liveness endpoint
    peaknet-operator render -f run.yaml [-o json]   # print the children it would create

Credentials: the pod's service account in a cluster, else $KUBECONFIG.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .handlers import STATUS_INTERVAL_S, register, settings

# What the chart's Deployment passes and probes (a test renders the chart and parses its args).
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="peaknet-operator", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="run as the only replica (no peering); the chart runs one replica this way",
    )
    parser.add_argument(
        "--status-interval-s",
        type=float,
        default=STATUS_INTERVAL_S,
        help=f"how often each resource's status is refreshed (default {STATUS_INTERVAL_S:g} s)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve kopf's liveness probe at this URL (the chart uses "
        f"{DEFAULT_LIVENESS}); default: none",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, **flags: Any) -> None:
    """Run kopf with the parsed options; `flags` (stop_flag, ready_flag) let tests drive it."""
    import kopf

    registry = register(kopf.OperatorRegistry(), args.status_interval_s)
    config = settings()
    # Watching named namespaces, kopf need not list namespaces nor watch CRDs (both
    # cluster-scoped): the chart's namespaced install grants a Role and nothing cluster-wide.
    config.scanning.disabled = bool(args.namespace)
    kopf.run(
        registry=registry,
        settings=config,
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness,
        **flags,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["render"]:
        from .render_cli import main as render_main

        sys.exit(render_main(argv[1:]))
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run(args)


if __name__ == "__main__":
    main()
