"""Logging: one handler, scrubbed at the formatter, SDK loggers pinned to WARNING.

The scrubber sits on the *handler*, so it sees every library's records (a filter on the root
logger would miss them). It replaces every registered secret, in raw, URL-encoded, JSON and
base64 forms, in the final text: message, arguments, extras and exception text alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import IO, Any

from .redact import scrub

#: Loggers of HTTP libraries and cloud SDKs: their DEBUG/INFO output carries URLs with
#: signatures, session tokens and JWT assertions. Pinned to WARNING whatever --log-level says.
PINNED_LOGGERS = (
    "httpx",
    "httpcore",
    "urllib3",
    "requests",
    "botocore",
    "boto3",
    "s3transfer",
    "azure",
    "google",
    "google.auth",
    "google.api_core",
    "google.cloud",
    "google.resumable_media",
    "hpack",
    "charset_normalizer",
)

#: fields every JSON log record of this process carries (the job, the phase), set by the runner
_context: dict[str, Any] = {}
_recording = threading.local()


def set_log_context(**fields: Any) -> None:
    """Add (or, with ``None``, remove) fields carried by every JSON log record: ``job``, ``phase``."""
    for key, value in fields.items():
        if value is None:
            _context.pop(key, None)
        else:
            _context[key] = value


@contextlib.contextmanager
def recording_context(recording_id: str) -> Iterator[None]:
    """JSON log records written by this thread inside the block carry ``recording``."""
    previous = getattr(_recording, "id", None)
    _recording.id = recording_id
    try:
        yield
    finally:
        _recording.id = previous


def log_context() -> dict[str, Any]:
    """The fields a JSON record gets now (this thread's recording included)."""
    fields = dict(_context)
    recording = getattr(_recording, "id", None)
    if recording is not None:
        fields["recording"] = recording
    return fields


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class ScrubbingFormatter(logging.Formatter):
    """Formats a record, then removes every known secret from the text."""

    def __init__(self, json_format: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self.json_format = json_format

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging API
        # plain traceback lines, never locals
        return super().formatException(ei)

    def format(self, record: logging.LogRecord) -> str:
        if self.json_format:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - wrong args must not print raw args
                message = str(record.msg)
            doc: dict[str, Any] = {
                "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message,
                **log_context(),
            }
            for key, value in vars(record).items():
                if key not in _STANDARD_ATTRS and not key.startswith("_"):
                    doc[key] = value
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
            text = json.dumps(doc, default=str)
        else:
            try:
                text = super().format(record)
            except Exception:  # noqa: BLE001
                text = f"{record.levelname} {record.name}: {record.msg}"
            extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
            if extras:
                text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return scrub(text)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.set_name("portshift")

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        # logging's default prints the raw arguments to stderr: never.
        return


def pin_loggers(names: Iterable[str], trees: Iterable[str] = ()) -> None:
    """Keep SDK and HTTP-library loggers at WARNING or above, whatever the root level is.

    Each of ``names`` is set to WARNING unless it is stricter already (a user's ERROR stays);
    every logger that exists under one of ``trees`` (``"google"`` covers ``google.auth``...)
    and was lowered below WARNING is raised back. The one function every plugin calls: the
    DEBUG output of these loggers carries signatures, session tokens and JWT grants.
    """
    for name in names:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET (0) included
            logger.setLevel(logging.WARNING)
    roots = tuple(trees)
    if roots:
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and name.split(".", 1)[0] in roots:
                if logging.NOTSET < logger.level < logging.WARNING:
                    logger.setLevel(logging.WARNING)


def json_logging() -> bool:
    """Is portshift's handler writing JSON records?"""
    for h in logging.getLogger().handlers:
        if h.get_name() == "portshift" and isinstance(h.formatter, ScrubbingFormatter):
            return h.formatter.json_format
    return False


def pin_sdk_loggers(unsafe_wire_debug: bool = False) -> None:
    if unsafe_wire_debug:
        for name in PINNED_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        return
    pin_loggers(PINNED_LOGGERS)


def configure_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Install portshift's single, scrubbing handler on the root logger."""
    logging.raiseExceptions = False
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "portshift":
            root.removeHandler(h)
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(ScrubbingFormatter(json_format=(fmt == "json")))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    pin_sdk_loggers()
