"""The resumable session URI, sealed for the job's journal under a key only the credential gives.

A GCS resumable session URI is a capability: whoever holds it can write the object (for up to a
week, with no other credential). To continue an upload after a crash the next run needs it, and
portshift's state must never hold a secret. So the URI is journaled only sealed:

- AES-256-GCM (``cryptography``, as :mod:`portshift.sealing`), a fresh 96-bit nonce per seal;
- under a key derived with HKDF-SHA256 from the service-account key's **private key** (the
  sink's own credential, which every run of the job is given again), with the bucket and the
  account's e-mail as HKDF info;
- the associated data is the bucket and the object name: a sealed URI copied to another entry
  does not open.

The state alone therefore gives nothing: opening a sealed URI needs the private key, and whoever
has that can already write the object. Without such a secret (Application Default Credentials,
anonymous access to a local test server) there is no key: no session is journaled and an upload
a crash stopped is sent again from byte 0 (see the README). A job whose state is sealed with the
customer's key (BYOK) journals this sealed value inside the core's own seal.

A sealed value is text: ``gs1:`` + base64(nonce || ciphertext || tag).
"""

from __future__ import annotations

import base64
import os
from typing import Any

PREFIX = "gs1:"
_SALT = b"portshift gcs resumable session v1"
_NONCE = 12


class SessionSeal:
    """Seals and opens session URIs for one bucket with a key derived from a private key."""

    __slots__ = ("_aead", "_bucket")

    def __init__(self, secret: bytes, account: str, bucket: str) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        info = b"\x00".join((b"session-uri", account.encode(), bucket.encode()))
        self._aead = AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(secret))
        self._bucket = bucket

    def __repr__(self) -> str:
        return "SessionSeal()"  # never the key

    @classmethod
    def for_options(cls, options: Any) -> SessionSeal | None:
        """The seal of a sink configured with a service-account key; ``None`` without one
        (ADC, anonymous): then no session URI may be journaled."""
        if options.key is None:
            return None
        from .credentials import parse_key

        info = parse_key(options.key)
        return cls(info["private_key"].encode(), info["client_email"], options.bucket)

    def _aad(self, name: str) -> bytes:
        return b"\x00".join((self._bucket.encode(), name.encode()))

    def seal(self, uri: str, name: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, uri.encode(), self._aad(name))
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, text: str, name: str) -> str | None:
        """The URI sealed for object ``name``; ``None`` when it does not open (sealed under
        another key, for another object, altered, or not a sealed value)."""
        from cryptography.exceptions import InvalidTag

        if not text.startswith(PREFIX):
            return None
        try:
            raw = base64.b64decode(text[len(PREFIX) :], validate=True)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad(name)).decode()
        except (InvalidTag, ValueError):
            return None
