"""`peaknet-pipeline`: run a pipeline, inspect its config, or push test frames to a socket."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import ConfigError, json_schema, load_config, to_yaml


def _add_config_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--config", "-c", required=required, metavar="FILE", help="YAML config file"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one field, e.g. --set inference.num_actors=2 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peaknet-pipeline",
        description="Streaming Bragg-peak segmentation on Ray, writing CXI files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline described by a config")
    _add_config_args(run, required=True)

    config = commands.add_parser("config", help="show, validate or describe the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective config (all fields)")
    _add_config_args(show, required=False)
    validate = config_commands.add_parser("validate", help="check a config file")
    _add_config_args(validate, required=True)
    config_commands.add_parser("schema", help="print the JSON schema of the config")

    from .sources.push import PARSER_OPTIONS, add_push_arguments

    push = commands.add_parser(
        "push",
        help="send test frames like LCLStreamer does (zmq PUSH or nng Push0)",
        **PARSER_OPTIONS,
    )
    add_push_arguments(push)
    return parser


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    logging.basicConfig(
        level=cfg.runtime.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .driver import StartupError, run

    try:
        report = run(cfg)
    except StartupError as exc:
        print(f"peaknet-pipeline: could not start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peaknet-pipeline: interrupted while starting", file=sys.stderr)
        return 130
    return int(report["exit_code"])


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.config_command == "show":
        print(to_yaml(cfg), end="")
    else:
        print(f"{args.config}: valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "config":
            return _config(args)
        from .sources.push import push_main

        return push_main(args)
    except ConfigError as exc:
        print(f"peaknet-pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
