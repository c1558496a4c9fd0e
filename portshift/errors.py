"""The error types of portshift and the exit codes they map to.

Every error a user can cause or meet is a :class:`PortshiftError`: one clear line (``str(e)``),
never a secret, never an SDK request object. The CLI prints that line and exits with
``exit_code``; a traceback is shown only with ``PORTSHIFT_DEBUG=1``.
"""

from __future__ import annotations


class ExitCode:
    """Documented exit codes (see docs/cli.md)."""

    OK = 0
    INTERNAL = 1  #: an unexpected bug; the traceback is shown with PORTSHIFT_DEBUG=1
    USAGE = 2  #: bad command line, bad job file, missing credential
    PARTIAL = 3  #: the job ran but some recordings failed; re-run to finish
    VERIFY_FAILED = 4  #: `portshift verify` found differences
    FATAL = 5  #: the job stopped: credentials rejected, destination unreachable, ...
    LOCKED = 6  #: another run of the same job is in progress
    INTERRUPTED = 130  #: stopped by SIGINT/SIGTERM; state is consistent, re-run to resume


class PortshiftError(Exception):
    """Base class: a one-line, secret-free message meant for the user."""

    exit_code = ExitCode.FATAL
    #: May the core retry the operation that raised this (per artifact)?
    retryable = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(PortshiftError):
    """The job file, an option, an argument or a credential is wrong. Nothing was transferred."""

    exit_code = ExitCode.USAGE


class LockedError(PortshiftError):
    """Another process is running the same job."""

    exit_code = ExitCode.LOCKED


class RemoteError(PortshiftError):
    """A network operation failed.

    Carries the operation (``"list engagements"``, ``"put object"``), the HTTP status when there
    was one and a *redacted* location (no query string, no userinfo). Never the SDK's request.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        status: int | None = None,
        location: str | None = None,
        retryable: bool | None = None,
        hint: str | None = None,
    ) -> None:
        parts = [message]
        if operation:
            parts.insert(0, f"{operation}:")
        if status is not None:
            parts.append(f"(HTTP {status})")
        if location:
            parts.append(f"at {location}")
        super().__init__(" ".join(parts), hint=hint)
        self.operation = operation
        self.status = status
        self.location = location
        if retryable is not None:
            self.retryable = retryable


class SourceError(RemoteError):
    """The source failed for one item (retryable unless said otherwise)."""

    retryable = True


class SinkError(RemoteError):
    """The sink failed to store one object (retryable unless said otherwise)."""

    retryable = True


class FatalError(RemoteError):
    """The whole job stops at once, no retries: going on could only fail the same way (the
    destination vanished, a region redirect that must not be followed, ...)."""

    retryable = False


class AuthError(FatalError):
    """Credentials were rejected: the whole job stops at once, no retries."""


class SkipRecording(PortshiftError):
    """Raised by a source: this recording cannot be exported and is skipped with a reason.

    ``reason`` is a short machine code (``"not_found"``, ``"forbidden"``, ``"private"``) stored in
    the job state; the message is shown to the user.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RecordingPending(SkipRecording):
    """Raised (or set on :attr:`portshift.api.Recording.skipped`) by a source: this recording is
    not ready yet (live, scheduled, still processing). It is not exported by this run and never
    dropped: the job records it as *pending*, and a later run of the same job file (``--since
    last`` included) lists its time again and exports it once it is ready. ``reason`` is a short
    machine code (``"processing"``, ``"live"``, ``"scheduled"``)."""


class ArtifactMissing(PortshiftError):
    """Raised by :meth:`portshift.api.Artifact.open` (or instead of yielding an artifact): this one
    file of the recording does not exist at the source (a call with no recording, media removed
    or expired). The recording's other artifacts are still exported; the missing one is recorded
    with ``reason`` and shown in the run summary, the JSON report and the manifest's inventory."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class IntegrityError(PortshiftError):
    """Bytes did not match what was declared or confirmed (size, SHA-256, provider checksum)."""

    retryable = True


class VerificationError(PortshiftError):
    """`portshift verify` found a difference."""

    exit_code = ExitCode.VERIFY_FAILED


class Interrupted(PortshiftError):
    """The run was asked to stop (SIGINT/SIGTERM)."""

    exit_code = ExitCode.INTERRUPTED


class StateError(FatalError):
    """The state DB cannot be written (disk full, read-only): the job stops, nothing done is lost."""


def check_failure(error: PortshiftError) -> PortshiftError:
    """What a plugin's ``check()`` raises for a failed probe, so that ``portshift run`` stops
    before listing with one line: configuration, authentication and fatal errors and an
    interrupt as they are; a refusal (HTTP 401/403) as an :class:`AuthError`; anything else (an
    unreachable endpoint, a TLS failure, a 5xx after retries) as a :class:`FatalError`. A plugin
    maps its own "does not exist" answer to a :class:`ConfigError` first."""
    if isinstance(error, ConfigError | FatalError | Interrupted):
        return error
    if getattr(error, "status", None) in (401, 403):
        return AuthError(error.message, hint=error.hint)
    return FatalError(error.message, hint=error.hint)


#: HTTP statuses a store answers for a request worth sending again (with any 5xx)
RETRYABLE_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def http_status_error(what: str, *, operation: str, status: int, location: str) -> SinkError:
    """A :class:`SinkError` for an HTTP answer no other rule explains: retryable when the status
    is in :data:`RETRYABLE_HTTP_STATUS` or any 5xx."""
    retryable = status in RETRYABLE_HTTP_STATUS or status >= 500
    return SinkError(what, operation=operation, status=status, location=location, retryable=retryable)


def redirect_refused(*, operation: str, status: int, location: str, hint: str) -> SinkError:
    """A store answered a 3xx: portshift never follows a redirect (it could carry the credential
    elsewhere). ``hint`` says which option should name the endpoint itself."""
    return SinkError(
        "the endpoint answered with a redirect, which portshift never follows",
        operation=operation,
        status=status,
        location=location,
        retryable=False,
        hint=hint,
    )
