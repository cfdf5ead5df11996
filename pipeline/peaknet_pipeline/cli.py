"""`peaknet-pipeline`: run a pipeline, inspect its config, push test frames to a socket, train
the demo PeakNet on synthetic frames, or evaluate a synthetic run against its injected peaks."""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, add_config_arguments, json_schema, load_config, to_yaml


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    """How `scale` and `stop` name a running run: by id, found through its control.json."""
    parser.add_argument(
        "run_id",
        metavar="RUN",
        help="the run's id (runtime.run_id; its control.json, found under runs/, says where "
        "it runs), or its run directory when the run writes outside runs/",
    )
    parser.add_argument(
        "--address",
        default=argparse.SUPPRESS,  # unset: the address in the run's control.json
        help="the run's Ray cluster, for a run without a control.json here (on a cluster); "
        "unset: the address in the run's control.json",
    )
    parser.add_argument(
        "--namespace",
        default=argparse.SUPPRESS,
        help="the run's Ray namespace (ray.namespace); unset: as in control.json, or peaknet",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peaknet-pipeline",
        description="Streaming Bragg-peak segmentation on Ray, writing CXI files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline described by a config")
    add_config_arguments(run)
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Ray's own log lines and actor prefixes (runtime.ray_logs=true)",
    )
    run.add_argument(
        "--continue",
        dest="continue_dir",
        metavar="DIR",
        help="continue the service whose directory is DIR (runtime.service), e.g. after its "
        "driver died: earlier DAQ runs stay, what was in flight is counted as lost. A service "
        "whose writer.output_dir already holds one (a fixed runtime.run_id) continues it anyway",
    )

    config = commands.add_parser("config", help="show, validate or describe the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective config (all fields)")
    add_config_arguments(show, required=False)
    validate = config_commands.add_parser(
        "validate",
        help="run every check `run` makes before Ray starts: the config, the files it names "
        "(replay files, weights), the output directory, CPUs, queues and the object-store "
        "budget (against ray.object_store_memory_bytes, or Ray's default for this machine)",
    )
    add_config_arguments(validate)
    budget = config_commands.add_parser(
        "budget",
        help="print the object-store formula (docs/tuning.md) filled in with the config's "
        "values, term by term, and the store it needs",
    )
    add_config_arguments(budget)
    config_commands.add_parser("schema", help="print the JSON schema of the config")

    scale = commands.add_parser(
        "scale",
        help="change the number of inference actors of a running pipeline",
        description="Ask a running pipeline for N inference actors. New actors join as they "
        "get ready; retired ones finish every batch they hold first, so no frame is lost.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_args(scale)
    scale.add_argument("--inference", type=int, required=True, metavar="N", help="actors")

    stop = commands.add_parser(
        "stop",
        help="stop a running pipeline's ingest and drain it (as a first Ctrl-C does)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_args(stop)

    from .sources.push import PARSER_OPTIONS, add_push_arguments

    push = commands.add_parser(
        "push",
        help="send test frames like LCLStreamer does (zmq PUSH or nng Push0)",
        **PARSER_OPTIONS,
    )
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

    report = commands.add_parser(
        "report",
        help="draw a run's report.html again from its directory (timeseries.jsonl, "
        "report.json, summary.json and the CXI files); on a service's directory its "
        "index.html, on a DAQ run's folder its report.html",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory")

    sweep = commands.add_parser(
        "sweep",
        help="run the pipeline once per point of a grid of config values; write a CSV and a "
        "plot of throughput, inference busy fraction and verdict per point",
        description="Example: sweep --config demo.yaml --param source.random.batch_size "
        "--values 1,2,4,8 --param inference.buffer_depth --values 1,2. Every point is "
        "validated before anything runs; each run keeps its directory under the sweep's.",
    )
    add_config_arguments(sweep)
    sweep.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY.PATH",
        help="a config key to vary (repeatable; each followed by its --values)",
    )
    sweep.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="V1,V2,...",
        help="the values of the preceding --param, comma-separated (YAML, e.g. [1,64,64])",
    )
    sweep.add_argument(
        "--output", metavar="DIR", help="the sweep's directory (default runs/sweep-<time>)"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *(["runtime.ray_logs=true"] if args.verbose else [])]
    cfg = load_config(args.config, overrides)
    from .logs import configure_ray_output, setup_logging

    setup_logging(cfg.runtime.log_level)
    configure_ray_output(cfg.runtime.ray_logs)  # before Ray is imported
    from .driver import StartupError, run

    try:
        report = run(cfg, continue_dir=args.continue_dir)
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
    if args.config_command == "budget":
        from .budget import explain
        from .preflight import run_in_flight

        print("\n".join(explain(cfg, run_in_flight(cfg))))
        return 0
    from .preflight import check_inputs

    problems = check_inputs(cfg)
    for problem in problems:
        print(f"peaknet-pipeline: {args.config}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.config}: valid")
    return 0


def _control(args: argparse.Namespace) -> int:
    """`scale` and `stop`: one call to the run's control actor, one line of answer. The run's
    control.json says which Ray instance to join (each local run embeds its own), unless
    --address names one."""
    from .control import find_run, request_scale, request_stop, use_auth_mode
    from .errors import describe
    from .logs import ray_log_level

    run_id, address = args.run_id, getattr(args, "address", None)
    namespace = getattr(args, "namespace", None)
    if address is None:
        try:
            record = find_run(args.run_id)
        except LookupError as exc:
            print(f"peaknet-pipeline {args.command}: {exc}", file=sys.stderr)
            return 2
        run_id, address = record["run_id"], record["address"]
        namespace = namespace or record["namespace"]
        use_auth_mode(record)  # before Ray is imported: Ray reads it once
    import ray

    try:
        ray.init(
            address=address,
            namespace=namespace or "peaknet",
            logging_level=ray_log_level(False),
            log_to_driver=False,
        )
        if args.command == "stop":
            request_stop(run_id)
            print(f"run {run_id}: stopping ingest; the pipeline drains what it accepted")
            return 0
        answer = request_scale(run_id, args.inference)
    except Exception as exc:  # noqa: BLE001 - every failure is one line, exit code 2
        reason = str(exc) if isinstance(exc, LookupError) else describe(exc)
        print(f"peaknet-pipeline {args.command}: {reason}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    if "refused" in answer:
        print(f"peaknet-pipeline scale: {answer['refused']}", file=sys.stderr)
        return 2
    print(
        f"run {run_id}: inference actors {answer.get('before', '?')} -> "
        f"{answer['requested']} requested; now {answer.get('running', '?')} running, "
        f"{answer.get('starting', 0)} starting, {answer.get('retiring', 0)} retiring"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import RunDirError, evaluate_run, recovery_lines
    from .service import not_a_run

    refusal = not_a_run(args.run_dir)
    if refusal is not None:
        print(f"peaknet-pipeline evaluate: {refusal}", file=sys.stderr)
        return 2
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


def _report(args: argparse.Namespace) -> int:
    from .monitor.page import RunDirError, render_run_dir
    from .service import redraw

    try:
        drawn = redraw(args.run_dir)  # a service's index, or one of its DAQ runs' pages
        if drawn is not None:
            print("\n".join(map(str, drawn)))
            return 0
        path = render_run_dir(args.run_dir)
    except RunDirError as exc:
        print(f"peaknet-pipeline: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .logs import configure_ray_output, setup_logging
    from .sweep import CSV_FILE, PLOT_FILE, axes_of, sweep, sweep_exit_code

    axes = axes_of(args.param, args.values)
    setup_logging("INFO")
    configure_ray_output(False)
    try:
        sweep_dir, rows = sweep(args.config, args.overrides, axes, args.output)
    except KeyboardInterrupt:
        print("peaknet-pipeline sweep: interrupted", file=sys.stderr)
        return 130
    print(f"sweep: {len(rows)} runs; {sweep_dir / CSV_FILE}, {sweep_dir / PLOT_FILE}")
    for row in rows:
        settings = ", ".join(f"{a.key}={row[a.key]}" for a in axes)
        print(
            f"  {settings}: exit {row['exit_code']}, {row.get('frames_per_s', 0) or 0} frames/s, "
            f"verdict {row.get('verdict') or '-'}"
        )
    return sweep_exit_code(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "config":
            return _config(args)
        if args.command in ("scale", "stop"):
            return _control(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "report":
            return _report(args)
        if args.command == "sweep":
            return _sweep(args)
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
