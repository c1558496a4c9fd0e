"""Where a customer's request may make the service's workers connect: allow-lists, not checks.

A request chooses hosts in two places: an Azure ``account_url`` (a request field) and the
``token_uri`` inside a GCS service-account key (a credential). Without a list, a stranger could
point a worker at any https host and port reachable from the service's network and learn from
the error which of them answer. So:

- ``account_url`` must be ``https://<name><suffix>`` with a suffix from ``azure_account_suffixes``
  (default: the public Azure Blob suffixes), on the default port, with no path, user or query,
  or exactly one of the operator's ``azure_account_urls``;
- a GCS key's ``token_uri`` must be one of ``gcs_token_uris`` (default: Google's);
- S3 endpoints are never a request field (``endpoint_url`` is operator-only, see offers.py);
- and whatever a worker reports about a failed connection, the client sees one text for
  "could not connect", "TLS failed" and "certificate refused" (:func:`blur_network_error`).

The operator changes the lists in the service configuration::

    [outbound]
    azure_account_suffixes = [".blob.core.windows.net"]
    azure_account_urls = ["https://azurite.internal:10000/devstoreaccount1"]
    gcs_token_uris = ["https://oauth2.googleapis.com/token"]
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from portshift.errors import ConfigError

AZURE_SUFFIXES = (
    ".blob.core.windows.net",
    ".blob.core.usgovcloudapi.net",
    ".blob.core.chinacloudapi.cn",
    ".blob.storage.azure.net",
)
GCS_TOKEN_URIS = ("https://oauth2.googleapis.com/token",)
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
NETWORK_ERROR = (
    "the destination could not be reached over a trusted TLS connection; "
    "check the account, bucket or endpoint you entered and that it accepts connections from this service"
)
_NETWORK_WORDS = re.compile(
    r"connect|\btls\b|\bssl\b|certificate|handshake|unreachable|timed out|timeout|"
    r"name resolution|resolve|\bdns\b|reset by peer|no route",
    re.IGNORECASE,
)


class DestinationRefused(ValueError):
    """A request names a host the operator does not allow (HTTP 400). Never echoes the value."""


@dataclass
class Outbound:
    azure_account_suffixes: tuple[str, ...] = AZURE_SUFFIXES
    azure_account_urls: tuple[str, ...] = ()
    gcs_token_uris: tuple[str, ...] = GCS_TOKEN_URIS

    @classmethod
    def from_config(cls, table: Any) -> Outbound:
        if table is None:
            return cls()
        if not isinstance(table, dict):
            raise ConfigError("--service-config: [outbound] must be a table")
        unknown = set(table) - {"azure_account_suffixes", "azure_account_urls", "gcs_token_uris"}
        if unknown:
            raise ConfigError(
                f"--service-config [outbound]: unknown keys {', '.join(sorted(unknown))} "
                "(valid: azure_account_suffixes, azure_account_urls, gcs_token_uris)"
            )
        out = cls()
        for key in ("azure_account_suffixes", "azure_account_urls", "gcs_token_uris"):
            if key in table:
                value = table[key]
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(f"--service-config [outbound] {key}: a list of strings")
                if key != "azure_account_suffixes" and not all(v.startswith("https://") for v in value):
                    raise ConfigError(f"--service-config [outbound] {key}: https:// URLs only")
                setattr(out, key, tuple(value))
        return out

    def check_azure_account_url(self, url: str) -> None:
        where = "sink.account_url"
        if url.rstrip("/") in {u.rstrip("/") for u in self.azure_account_urls}:
            return
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise DestinationRefused(f"{where}: not a URL like https://<account>.blob.core.windows.net") from None
        host = (parts.hostname or "").lower()
        if (
            parts.scheme != "https"
            or parts.username is not None
            or parts.password is not None
            or port not in (None, 443)
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise DestinationRefused(f"{where}: must be https://<account>.blob.core.windows.net with no port, path or query")
        for suffix in self.azure_account_suffixes:
            if host.endswith(suffix) and _ACCOUNT.match(host[: -len(suffix)]):
                return
        raise DestinationRefused(
            f"{where}: the storage account must be under {', '.join(self.azure_account_suffixes)} (this service's allow-list)"
        )

    def check_gcs_key(self, key_json: str) -> None:
        where = "sink.key"
        try:
            doc = json.loads(key_json)
        except ValueError:
            raise DestinationRefused(f"{where}: not a service-account key (JSON)") from None
        token_uri = doc.get("token_uri") if isinstance(doc, dict) else None
        if not isinstance(token_uri, str) or token_uri not in self.gcs_token_uris:
            raise DestinationRefused(f"{where}: token_uri must be {' or '.join(self.gcs_token_uris)} (this service's allow-list)")


def blur_network_error(text: str | None) -> str | None:
    """One text for every failed connection: a client must not learn which hosts answer."""
    if text and _NETWORK_WORDS.search(text):
        return NETWORK_ERROR
    return text
