"""`peaknet-pipeline`: run a pipeline, inspect its config, push test frames to a socket, train
the demo PeakNet on synthetic frames, or evaluate a synthetic run against its injected peaks."""

from __future__ import annotations

import argparse
import json
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
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Ray's own log lines and actor prefixes (runtime.ray_logs=true)",
    )

    config = commands.add_parser("config", help="show, validate or describe the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective config (all fields)")
    _add_config_args(show, required=False)
    validate = config_commands.add_parser(
        "validate", help="check a config file and the files it names (replay files, weights)"
    )
    _add_config_args(validate, required=True)
    config_commands.add_parser("schema", help="print the JSON schema of the config")

    push = commands.add_parser(
        "push", help="send test frames like LCLStreamer does (zmq PUSH or nng Push0)"
    )
    from .sources.push import add_push_arguments

    add_push_arguments(push)

    train = commands.add_parser(
        "train",
        help="train the configured PeakNet on the random source's frames (CPU, or CUDA "
        "when present) and write its state dict plus a sidecar JSON",
    )
    from .training.cli import add_train_arguments

    add_train_arguments(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="recall, spurious fraction and position error of a finished random-source run "
        "against the peaks it injected",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory")
    evaluate.add_argument("--tolerance-px", type=float, default=1.5, metavar="PX")
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def _run(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *(["runtime.ray_logs=true"] if args.verbose else [])]
    cfg = load_config(args.config, overrides)
    from .logs import configure_ray_output, setup_logging

    setup_logging(cfg.runtime.log_level)
    configure_ray_output(cfg.runtime.ray_logs)  # before Ray is imported
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
        return 0
    from .preflight import check_inputs

    problems = check_inputs(cfg)
    for problem in problems:
        print(f"peaknet-pipeline: {args.config}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.config}: valid")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import RunDirError, evaluate_run, recovery_lines

    try:
        stats = evaluate_run(args.run_dir, args.tolerance_px)
    except RunDirError as exc:
        print(f"peaknet-pipeline: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"run {stats['run_id']}: {stats['events']} events generated, "
        f"{stats['events_in_files']} in the CXI files"
    )
    for line in recovery_lines(stats, stats["model"]):
        print(f"  {line}")
    if not stats["complete"]:
        print("  (the run was hard-stopped: events only in .part files count as missed)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "config":
            return _config(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "train":
            from .training.cli import train_main

            return train_main(args, argv)
        from .sources.push import push_main

        return push_main(args)
    except ConfigError as exc:
        print(f"peaknet-pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
