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

from portshift import hookimpl

__all__ = ["AzureOptions", "AzureReader", "AzureSink"]


#: the SDK is imported only when a job uses this plugin (registered by reference below);
#: ``from <package> import <Class>`` still works and imports it then
_LAZY = {"AzureOptions": "options", "AzureReader": "reader", "AzureSink": "sink"}


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whatever the submodule holds
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("azure", "portshift_sink_azure.sink:AzureSink")


@hookimpl
def register_readers(register):  # type: ignore[no-untyped-def]
    register("azure", "portshift_sink_azure.reader:AzureReader")
