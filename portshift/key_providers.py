"""Key providers: what wraps and unwraps a job's data key with the customer's key (docs/byok.md).

A key is named by one string, ``<provider>:<reference>``: ``file:/etc/portshift/state.key`` (a
local key file, built in) or ``kms:arn:aws:kms:eu-west-1:111122223333:key/…`` (AWS KMS, from
the S3 plugin). Providers are plugins (``register_key_providers``). The name is stored beside
each wrapped data key (it names the key, never holds it), so ``portshift jobs`` and resume find
the key a job was sealed with.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .errors import ConfigError
from .sealing import DATA_KEY_BYTES, NONCE_BYTES, KeyUnavailableError, new_data_key
from .secrets import Secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KeyProvider", "LocalKeyFile", "key_provider"]


class KeyProvider(ABC):
    """Wraps and unwraps data keys with one customer key. ``ref`` is the reference after
    ``<name>:``; ``endpoint_url`` and ``ca_bundle`` reach a KMS-compatible service (a provider
    that needs neither ignores them). ``credentials`` (e.g. ``access_key_id``/``secret_access_key``
    from ``--secrets-from-stdin``): the provider's own, when given, instead of its usual source."""

    name: ClassVar[str] = ""

    def __init__(
        self,
        ref: str,
        *,
        endpoint_url: str | None = None,
        ca_bundle: Path | None = None,
        credentials: dict[str, Secret] | None = None,
    ) -> None:
        self.ref = self.normalized(ref)
        self.endpoint_url = endpoint_url
        self.ca_bundle = ca_bundle
        self.credentials = dict(credentials or {})

    @staticmethod
    def normalized(ref: str) -> str:
        """``ref`` as the provider keeps it (a file key: its absolute path)."""
        return ref

    @property
    def label(self) -> str:
        """The key's name, safe to show and to store: ``<provider>:<reference>``."""
        return f"{self.name}:{self.ref}"

    @abstractmethod
    def new_data_key(self, job_id: str) -> tuple[bytes, bytes]:
        """A fresh data key for ``job_id``: (the key, the key wrapped by the customer's key)."""

    @abstractmethod
    def unwrap(self, wrapped: bytes, job_id: str) -> bytes:
        """The data key of ``job_id``; :class:`KeyUnavailableError` naming the key when the key
        is disabled, revoked, unreachable or not the one that wrapped it."""

    @abstractmethod
    def wrap(self, data_key: bytes, job_id: str) -> bytes:
        """An existing data key wrapped by this key (rotation)."""

    def rewrap(self, wrapped: bytes, job_id: str, new: KeyProvider) -> bytes:
        """``wrapped`` (by this key) wrapped by ``new`` instead; the sealed rows stay as they are."""
        key = self.unwrap(wrapped, job_id)
        return new.wrap(key, job_id)

    def check(self) -> None:
        """Wrap and unwrap once (before a job starts): one clear line when the key cannot."""
        key, wrapped = self.new_data_key("portshift-key-check")
        if self.unwrap(wrapped, "portshift-key-check") != key:
            raise KeyUnavailableError(f"the key {self.label} did not give back the data key it wrapped")


def key_provider(
    spec: str, *, endpoint_url: str | None = None, ca_bundle: Path | None = None, credentials: dict[str, Secret] | None = None
) -> KeyProvider:
    """The provider a ``<provider>:<reference>`` string names (one clear line when it is wrong)."""
    from . import plugins

    name, sep, ref = spec.strip().partition(":")
    if not sep or not name or not ref:
        raise ConfigError(
            f"[state] key: {spec[:80]!r} does not name a key",
            hint='use "file:/path/to/state.key" or "kms:arn:aws:kms:<region>:<account>:key/<id>"',
        )
    cls = plugins.key_providers().get(name)
    if credentials:  # only then: a provider written before credentials existed still builds without them
        return cls(ref, endpoint_url=endpoint_url, ca_bundle=ca_bundle, credentials=credentials)  # type: ignore[no-any-return]
    return cls(ref, endpoint_url=endpoint_url, ca_bundle=ca_bundle)  # type: ignore[no-any-return]


def _whole(e: KeyUnavailableError) -> KeyUnavailableError:
    e.whole_key = True
    return e


class LocalKeyFile(KeyProvider):
    """A 256-bit key in a local file (base64, one line; mode 0600): for operators of
    ``portshift run`` and for tests. Create one with ``openssl rand -base64 32 > state.key``."""

    name = "file"
    _AAD = b"portshift data key\x00"

    @staticmethod
    def normalized(ref: str) -> str:
        return str(Path(ref).expanduser().absolute())

    def _kek(self) -> AESGCM:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        path = Path(self.ref).expanduser()
        try:
            st = path.stat()
            text = path.read_bytes()
        except FileNotFoundError:
            raise _whole(
                KeyUnavailableError(f"the key file {path} does not exist", hint="restore it, or point [state] key at it")
            ) from None
        except OSError as e:
            raise _whole(KeyUnavailableError(f"the key file {path} cannot be read ({e.strerror})")) from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyUnavailableError(f"the key file {path} is not a file")
        if st.st_mode & 0o077:
            raise ConfigError(f"the key file {path} is readable by others", hint=f"chmod 600 {path}")
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != DATA_KEY_BYTES:
            raise ConfigError(
                f"the key file {path} does not hold a base64 256-bit key", hint="create one with: openssl rand -base64 32"
            )
        return AESGCM(key)

    def new_data_key(self, job_id: str) -> tuple[bytes, bytes]:
        key = new_data_key()
        return key, self.wrap(key, job_id)

    def wrap(self, data_key: bytes, job_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._kek().encrypt(nonce, data_key, self._AAD + job_id.encode())

    def unwrap(self, wrapped: bytes, job_id: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        kek = self._kek()
        try:
            return kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], self._AAD + job_id.encode())
        except InvalidTag:
            raise KeyUnavailableError(
                f"the key {self.label} does not unwrap the data key of job {job_id} (another key file?)"
            ) from None
