"""Read an export back from GCS (``portshift verify --store``), with read-only credentials.

Uses google-cloud-storage's ``storage.Client`` bound to the same hardened session as the sink
(``_http=``) and to the configured ``api_endpoint`` explicitly, so the client never consults
``STORAGE_EMULATOR_HOST`` or ``API_ENDPOINT_OVERRIDE``. Needs ``storage.objects.get`` and
``storage.objects.list`` (``roles/storage.objectViewer``) — deliberately not the sink's role.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import Credentials
from google.cloud import storage

from portshift import AuthError, PortshiftError, Reader, SourceError, sanitize_message

from . import errors
from .credentials import connect
from .options import GcsOptions

READ_CHUNK = 4 * 1024 * 1024


def build_client(options: GcsOptions, session: Any) -> storage.Client:
    """A google-cloud-storage client on ``session`` and the explicit endpoint."""
    return storage.Client(
        project=options.project or "portshift-no-project",
        credentials=session.credentials,
        _http=session,
        client_options=ClientOptions(api_endpoint=options.api_endpoint),
    )


class GcsReader(Reader):
    Options = GcsOptions
    description = "reads objects back from Google Cloud Storage (roles/storage.objectViewer)"

    options: GcsOptions

    def __init__(self, options: GcsOptions, *, _credentials: Credentials | None = None) -> None:
        super().__init__(options)
        self._session, self._token_session = connect(options, _credentials)
        self.client = build_client(options, self._session)
        self._bucket = self.client.bucket(options.bucket)

    def location(self) -> str:
        base = f"gs://{self.options.bucket}"
        return f"{base}/{self.options.prefix}" if self.options.prefix else base

    def _name(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.options.prefix}/{key}" if self.options.prefix else key

    def open(self, key: str) -> Iterator[bytes]:
        name = self._name(key)
        where = f"gs://{self.options.bucket}/{name}"
        failure: PortshiftError | None = None
        missing = False
        try:
            reader = self._bucket.blob(name).open("rb", chunk_size=READ_CHUNK)
        except api_exceptions.NotFound:
            missing = True
        except Exception as e:  # noqa: BLE001 - translated below, raised from None
            failure = _translate(e, "read object", where)
        if missing:
            raise FileNotFoundError(where)
        if failure is not None:
            raise failure from None
        return self._blocks(reader, where)

    def _blocks(self, reader: Any, where: str) -> Iterator[bytes]:
        with reader:
            while True:
                failure: PortshiftError | None = None
                missing = False
                try:
                    block = reader.read(READ_CHUNK)
                except api_exceptions.NotFound:
                    missing = True
                except Exception as e:  # noqa: BLE001
                    failure = _translate(e, "read object", where)
                if missing:
                    raise FileNotFoundError(where)
                if failure is not None:
                    raise failure from None
                if not block:
                    return
                yield block

    def list(self, prefix: str) -> Iterator[str]:
        full = self._name(prefix) if prefix else (self.options.prefix + "/" if self.options.prefix else "")
        cut = len(self.options.prefix) + 1 if self.options.prefix else 0
        failure: PortshiftError | None = None
        names: list[str] = []
        try:
            names = [b.name for b in self.client.list_blobs(self.options.bucket, prefix=full)]
        except Exception as e:  # noqa: BLE001
            failure = _translate(e, "list objects", f"gs://{self.options.bucket}/{full}")
        if failure is not None:
            raise failure from None
        for name in names:
            yield name[cut:]

    def close(self) -> None:
        self.client.close()
        self._token_session.close()


def _translate(e: BaseException, operation: str, where: str) -> PortshiftError:
    if isinstance(e, api_exceptions.GoogleAPICallError):
        status = getattr(e, "code", None)
        text = f"{type(e).__name__}"
        reason = getattr(e, "reason", None)
        if reason:
            text += f" ({sanitize_message(str(reason), 120)})"
        if status in (401, 403):
            return AuthError(
                f"GCS answered: {text}",
                operation=operation,
                status=status,
                location=where,
                hint="reading back needs roles/storage.objectViewer on the bucket",
            )
        return SourceError(f"GCS answered: {text}", operation=operation, status=status, location=where)
    return errors.from_exception(e, operation, where)
