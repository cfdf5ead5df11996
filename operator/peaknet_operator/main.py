"""`peaknet-operator`: run the PeakNetPipeline operator (kopf).

    peaknet-operator                       # every namespace
    peaknet-operator --namespace beamtime  # only these namespaces (repeat the option)
    peaknet-operator --standalone          # one replica, no peering with other operators

Credentials: the pod's service account in a cluster, else $KUBECONFIG.
"""

from __future__ import annotations

import argparse
import logging

from .handlers import STATUS_INTERVAL_S, register, settings


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
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import kopf

    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    registry = register(kopf.OperatorRegistry(), args.status_interval_s)
    kopf.run(
        registry=registry,
        settings=settings(),
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=not args.namespace,
    )


if __name__ == "__main__":
    main()
