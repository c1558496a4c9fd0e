"""portshift-sink-azure: store exports in Azure Blob Storage.

Each file becomes a block blob, streamed in blocks whose MD5 Azure checks on receipt; the
whole-file MD5 is set as the blob's Content-MD5. Credentials: a SAS token with create+write on
the container, from ``PORTSHIFT_AZURE_SAS`` or ``sas_file``, handed to the SDK as a credential
object so that no URL, log line or error ever carries it.

Also a reader for ``portshift verify --store`` (same options under ``[store]``, with a separate
read + list SAS): blobs are streamed back in ranges and re-hashed in memory.
"""

from __future__ import annotations

from typing import Any

from portshift import hookimpl, lazy_attributes

__all__ = ["AzureOptions", "AzureReader", "AzureSink"]


#: the SDK is imported only when a job uses this plugin (registered by reference below);
#: ``from <package> import <Class>`` still works and imports it then
__getattr__ = lazy_attributes(__name__, {"AzureOptions": "options", "AzureReader": "reader", "AzureSink": "sink"})


@hookimpl
def register_sinks(register: Any) -> None:
    register("azure", "portshift_sink_azure.sink:AzureSink")


@hookimpl
def register_readers(register: Any) -> None:
    register("azure", "portshift_sink_azure.reader:AzureReader")
