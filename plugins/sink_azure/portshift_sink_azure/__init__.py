"""portshift-sink-azure: store exports in Azure Blob Storage.

Each file becomes a block blob, streamed in blocks whose MD5 Azure checks on receipt; the
whole-file MD5 is set as the blob's Content-MD5. Credentials: a SAS token with create+write on
the container, from ``PORTSHIFT_AZURE_SAS`` or ``sas_file``, handed to the SDK as a credential
object so that no URL, log line or error ever carries it.

Also a reader for ``portshift verify --store`` (same options under ``[store]``, with a separate
read + list SAS): blobs are streamed back in ranges and re-hashed in memory.
"""

from __future__ import annotations

from portshift import hookimpl

from .options import AzureOptions
from .reader import AzureReader
from .sink import AzureSink
from .transport import pin_loggers

__all__ = ["AzureOptions", "AzureReader", "AzureSink"]

pin_loggers()


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("azure", AzureSink)


@hookimpl
def register_readers(register):  # type: ignore[no-untyped-def]
    register("azure", AzureReader)
