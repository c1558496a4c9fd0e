"""Options shared by commands that read a job file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..config import JobConfig, load_job
from ..errors import ConfigError


def config_option(fn: Any) -> Any:
    return click.option(
        "--config",
        "-c",
        "config_path",
        required=True,
        type=click.Path(path_type=Path, dir_okay=True, exists=False),
        help="the TOML job file",
    )(fn)


def secrets_stdin_option(fn: Any) -> Any:
    return click.option(
        "--secrets-from-stdin",
        is_flag=True,
        help='read credentials as one JSON document from stdin: {"source": {"token": "..."}, "sink": {...}}',
    )(fn)


def read_stdin_secrets() -> dict[str, Any]:
    """The document on stdin; in a service worker, the one its handover collected (portshift.handover)."""
    from ..handover import HandoverError, take

    try:
        handed = take()
    except HandoverError as e:
        raise ConfigError(f"--secrets-from-stdin: {e}") from None
    raw = sys.stdin.read() if handed is None else handed
    if not raw.strip():
        raise ConfigError("--secrets-from-stdin: nothing on standard input")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--secrets-from-stdin: not a JSON document (line {e.lineno}, column {e.colno})") from None
    finally:
        del raw
    if not isinstance(doc, dict):
        raise ConfigError('--secrets-from-stdin: expected a JSON object like {"source": {...}, "sink": {...}}')
    return doc


def load(config_path: Path, secrets_from_stdin: bool) -> JobConfig:
    secrets = read_stdin_secrets() if secrets_from_stdin else None
    return load_job(config_path, secrets=secrets)
