"""Messages a user reads (issue 20, point 11), each through the real command: a YAML syntax
error names the file and the line, not `<unicode string>`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _validate(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peaknet_pipeline.cli", "config", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=config.parent,
        timeout=120,
    )


def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_the_line(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(
        "source:\n  kind: random\n  random: {batch_size: 4\nwriter:\n  min_peaks: 1\n"
    )
    result = _validate(config)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"peaknet-pipeline: config file {config}, line 4, column 7: not valid YAML: expected "
        "',' or '}', but got ':' (while parsing a flow mapping that starts at line 3, column 11)"
    )

    config.write_text("writer:\n\tmin_peaks: 1\n")
    result = _validate(config)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"peaknet-pipeline: config file {config}, line 2, column 1: not valid YAML: found "
        "character '\\t' that cannot start any token (YAML indents with spaces, not tabs)"
    )
