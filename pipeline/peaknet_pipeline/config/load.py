"""Reading a config: YAML file, then `--set a.b.c=value` overrides, then validation.

These are pure functions over plain dicts; the CLI, the driver and the operator all call them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .models import PipelineConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending path and the reason."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value (``8``, ``true``, ``[1,2]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    path = [part.strip() for part in key.split(".")]
    if any(not part for part in path):
        raise ConfigError(f"--set {text!r}: empty component in key path {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r}{yaml_problem(exc)}") from None
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each override applied; intermediate sections are created."""
    merged: dict[str, Any] = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return merged


def format_validation_error(exc: ValidationError, origin: str) -> str:
    """One line per problem, each starting with the dotted path of the offending field."""
    lines = [f"invalid config ({origin}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<top>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (check the spelling; see `config schema`)")
        else:
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def validate_config(data: Mapping[str, Any], origin: str = "config") -> PipelineConfig:
    """Validate a plain dict into a PipelineConfig, raising ConfigError with field paths."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong with a YAML text and where, on one line: `, line L, column C: not valid
    YAML: <problem> (<context>)`. PyYAML's own text spans several lines and names the parsed
    string `"<unicode string>"` rather than the file."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:  # not a marked error: PyYAML's first line is all there is
        return f": not valid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    text = f", line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"
    context, where = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if "'\\t'" in problem:
        text += " (YAML indents with spaces, not tabs)"
    elif context and where is not None and (where.line, where.column) != (mark.line, mark.column):
        text += f" ({context} that starts at line {where.line + 1}, column {where.column + 1})"
    return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty config."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p}{yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p}: top level must be a mapping, not {type(data).__name__}"
        )
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """The effective config: file (or defaults), then overrides, then validation."""
    data = read_yaml(path) if path is not None else {}
    origin = str(path) if path is not None else "defaults"
    overrides = list(overrides)
    if overrides:
        origin += " with --set overrides"
    return validate_config(apply_overrides(data, overrides), origin)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    required: bool = True,
    example: str = "inference.num_actors=2",
) -> None:
    """`--config FILE` and repeatable `--set KEY.PATH=VALUE`, the pair `load_config` takes
    (as `args.config` and `args.overrides`); declared once so every command that reads a
    config spells them alike. `example` is the override the help shows."""
    parser.add_argument(
        "--config", "-c", required=required, metavar="FILE", help="YAML config file"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help=f"override one config field, e.g. --set {example} (repeatable)",
    )


def to_yaml(cfg: PipelineConfig) -> str:
    """The config as YAML, every field present, in schema order."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_hash(cfg: PipelineConfig) -> str:
    """A short stable digest of the effective config, stamped on output files."""
    canonical = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def json_schema() -> dict[str, Any]:
    """The JSON schema of PipelineConfig (the CRD's spec.pipeline is generated from it)."""
    return PipelineConfig.model_json_schema()
