"""The azure-storage-blob clients both the sink and the reader use: one hardened transport
(:mod:`.transport`), the SAS as a credential object (never in a URL), no redirects."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import AzureError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient, ContainerClient

from portshift import SinkError

from .options import AzureOptions
from .sas import normalize_token
from .transport import Retries, build_transport, pin_loggers


def location_of(options: AzureOptions) -> str:
    """``https://<endpoint>/<container>[/<prefix>]``: no query string, no credential."""
    loc = f"{options.account_url.rstrip('/')}/{options.container}"
    return f"{loc}/{options.prefix}" if options.prefix else loc


def connect(
    options: AzureOptions, *, cancel: Callable[[], threading.Event | None] = lambda: None, **client_kwargs: Any
) -> tuple[RequestsTransport, BlobServiceClient, ContainerClient]:
    """The transport, service client and container client for ``options``. ``client_kwargs``
    tune transfer sizes (``max_block_size``, ``max_chunk_get_size``...); ``cancel`` returns the
    event that ends a retry's wait (the sink's :attr:`~portshift.Sink.cancel`)."""
    if options.sas is None:  # pragma: no cover - the options model requires it
        raise SinkError("no SAS token", retryable=False)
    pin_loggers()
    transport = build_transport(options.ca_bundle, connect_timeout=options.connect_timeout, read_timeout=options.read_timeout)
    kwargs: dict[str, Any] = {
        "credential": AzureSasCredential(normalize_token(options.sas, options.section_name)),
        "transport": transport,
        "retry_policy": Retries(options.request_retries, cancel),
        "permit_redirects": False,
        **client_kwargs,
    }
    if options.api_version:
        kwargs["api_version"] = options.api_version
    try:
        service = BlobServiceClient(options.account_url.rstrip("/"), **kwargs)
        container = service.get_container_client(options.container)
    except (ValueError, AzureError) as e:
        raise SinkError(
            f"cannot set up the Azure client ({type(e).__name__})",
            operation="connect",
            location=location_of(options),
            retryable=False,
        ) from None
    return transport, service, container
