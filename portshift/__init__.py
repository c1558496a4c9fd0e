"""portshift: export call recordings, transcripts and metadata into your own bucket.

This module is the whole public surface for plugin authors: import what a plugin needs from
``portshift`` (and test helpers from ``portshift.testing``), never from a submodule. Names are
loaded on first use, so ``import portshift`` stays cheap for every process that loads plugins.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

#: Decorate plugin functions with this to implement a portshift hook.
hookimpl = pluggy.HookimplMarker("portshift")

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # the shapes a plugin implements, and what they exchange
    "Source": "api",
    "Sink": "api",
    "Reader": "api",
    "Journal": "api",
    "ManifestWriter": "api",
    "Artifact": "api",
    "Opened": "api",
    "Recording": "api",
    "Window": "api",
    "PutResult": "api",
    "JobInfo": "api",
    "ManifestEntry": "api",
    "StoredFile": "api",
    "HashingStream": "hashing",
    "InFlight": "inflight",
    "Continuation": "resume",
    "ResumeRefused": "resume",
    "ResumableUpload": "resume",
    # options and secrets
    "PluginOptions": "options",
    "HttpsUrl": "options",
    "build_options": "config",
    "Secret": "secrets",
    "secret_field": "secrets",
    "register_mask": "secrets",
    "forget_mask": "secrets",
    # errors
    "ExitCode": "errors",
    "PortshiftError": "errors",
    "ConfigError": "errors",
    "RemoteError": "errors",
    "SourceError": "errors",
    "SinkError": "errors",
    "FatalError": "errors",
    "AuthError": "errors",
    "SkipRecording": "errors",
    "RecordingPending": "errors",
    "ArtifactMissing": "errors",
    "IntegrityError": "errors",
    "Interrupted": "errors",
    "check_failure": "errors",
    "http_status_error": "errors",
    "redirect_refused": "errors",
    # retries and rate
    "Attempts": "retry",
    "Backoff": "retry",
    "RateLimiter": "retry",
    "AutoRate": "rate_auto",
    "AutoPacer": "rate_auto_pacing",
    "RateMemory": "rate_auto",
    "SharedRate": "retry",
    "call_with_retries": "retry",
    "parse_retry_after": "retry",
    "wait_or_interrupt": "retry",
    # TLS and redaction
    "ssl_context": "tls",
    "https_client": "tls",
    "require_https": "tls",
    "handshake_failure": "tls",
    "dropped_under_tls": "tls",
    "exception_chain": "tls",
    "ssl_reason": "tls",
    "harden_session": "requests_tls",
    "https_requests_session": "requests_tls",
    "is_plain_http_refusal": "requests_tls",
    "PlainHTTPRefused": "requests_tls",
    "refused_request": "requests_tls",
    "connection_failed": "requests_tls",
    # what every sink needs: sizes, data residency, content types, quiet SDK loggers
    "Size": "sizes",
    "parse_size": "sizes",
    "format_size": "sizes",
    "AllowedRegions": "residency",
    "ResidencyError": "residency",
    "region_allowed": "residency",
    "require_allowed": "residency",
    "refuse_unverifiable": "residency",
    "media_type": "media_types",
    "content_type_for": "media_types",
    "pin_loggers": "logs",
    "lazy_attributes": "lazy",
    "redact_url": "redact",
    "sanitize_message": "redact",
    # sealing the job metadata with the customer's key (docs/byok.md)
    "KeyProvider": "key_providers",
    "KeyUnavailableError": "sealing",
}

__all__ = ["__version__", "hookimpl", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'portshift' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .api import (
        Artifact,
        JobInfo,
        Journal,
        ManifestEntry,
        ManifestWriter,
        Opened,
        PutResult,
        Reader,
        Recording,
        Sink,
        Source,
        StoredFile,
        Window,
    )
    from .config import build_options
    from .errors import (
        ArtifactMissing,
        AuthError,
        ConfigError,
        ExitCode,
        FatalError,
        IntegrityError,
        Interrupted,
        PortshiftError,
        RecordingPending,
        RemoteError,
        SinkError,
        SkipRecording,
        SourceError,
        check_failure,
        http_status_error,
        redirect_refused,
    )
    from .hashing import HashingStream
    from .inflight import InFlight
    from .key_providers import KeyProvider
    from .lazy import lazy_attributes
    from .logs import pin_loggers
    from .media_types import content_type_for, media_type
    from .options import HttpsUrl, PluginOptions
    from .rate_auto import AutoRate, RateMemory
    from .rate_auto_pacing import AutoPacer
    from .redact import redact_url, sanitize_message
    from .requests_tls import (
        PlainHTTPRefused,
        connection_failed,
        harden_session,
        https_requests_session,
        is_plain_http_refusal,
        refused_request,
    )
    from .residency import AllowedRegions, ResidencyError, refuse_unverifiable, region_allowed, require_allowed
    from .resume import Continuation, ResumableUpload, ResumeRefused
    from .retry import Attempts, Backoff, RateLimiter, SharedRate, call_with_retries, parse_retry_after, wait_or_interrupt
    from .sealing import KeyUnavailableError
    from .secrets import Secret, forget_mask, register_mask, secret_field
    from .sizes import Size, format_size, parse_size
    from .tls import (
        dropped_under_tls,
        exception_chain,
        handshake_failure,
        https_client,
        require_https,
        ssl_context,
        ssl_reason,
    )
