"""Envelope encryption of job metadata ("bring your own key", docs/byok.md).

Each job gets a fresh 256-bit *data key*. Values that name the customer's data are sealed with
AES-256-GCM under it; the associated data is the job id, the table and the column, so a sealed
value copied to another job's row or another column fails authentication. Equality lookups
("is this recording done?") use a keyed hash: HMAC-SHA256 under a key derived from the data key
with HKDF, so resume never decrypts every row. The data key is stored only wrapped by the
customer's key (a :class:`KeyProvider`, see :mod:`portshift.keys_providers`) and lives only in
this process's memory.

A sealed value is text: ``s1:`` + base64(nonce 12 bytes || ciphertext || tag 16 bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from .errors import PortshiftError

# ``cryptography`` is imported only when a job is sealed: a process that opens a clear state (every
# worker of a job without a key) does not pay for importing it.

__all__ = ["DATA_KEY_BYTES", "KeyUnavailableError", "SealedValueError", "Sealer", "is_sealed", "new_data_key"]

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
PREFIX = "s1:"
_LOOKUP_INFO = b"portshift lookup key v1"
_SEAL_INFO = b"portshift seal key v1"


class SealedValueError(PortshiftError):
    """A sealed value failed authentication: it was altered, or moved to another row or column."""


class KeyUnavailableError(PortshiftError):
    """The customer's key cannot unwrap a job's data key (disabled, revoked, deleted, no access).
    ``whole_key``: the key itself cannot be used now (not only this job's wrapped data key), so a
    command reading many jobs need not ask again for each."""

    whole_key = False


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _derive(data_key: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


class Sealer:
    """Seals and opens the values of one job with its data key (held only here, in memory)."""

    __slots__ = ("_aead", "_lookup", "job_id")

    def __init__(self, job_id: str, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.job_id = job_id
        # two independent keys from the one data key: one encrypts, one hashes for lookups
        self._aead = AESGCM(_derive(data_key, _SEAL_INFO))
        self._lookup = _derive(data_key, _LOOKUP_INFO)

    def __repr__(self) -> str:
        return f"Sealer(job_id={self.job_id!r})"  # never the key

    def _aad(self, table: str, column: str, row: str) -> bytes:
        return b"\x00".join(p.encode() for p in (self.job_id, table, column, row))

    def seal(self, table: str, column: str, value: str | None, row: str = "") -> str | None:
        """``value`` sealed for this job's ``table.column`` (None stays None); ``row`` (e.g. the
        row's keyed hash) binds it to its row as well."""
        if value is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), self._aad(table, column, row))
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, table: str, column: str, value: str | None, row: str = "") -> str | None:
        """The clear value of a sealed one; :class:`SealedValueError` naming the job and the
        field when it was altered or does not belong to this job's ``table.column``."""
        if value is None:
            return None
        where = f"{table}.{column} of job {self.job_id}"
        if not is_sealed(value):
            raise SealedValueError(f"the state holds a clear value in {where}, which must be sealed")
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(value[len(PREFIX) :], validate=True)
            clear = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(table, column, row))
        except (InvalidTag, ValueError):
            raise SealedValueError(
                f"the sealed value in {where} fails authentication: it was altered or copied from another row or column",
                hint="restore the state from a backup; the files already exported are not affected",
            ) from None
        return clear.decode("utf-8")

    def lookup(self, kind: str, value: str) -> str:
        """The keyed hash of ``value`` for equality lookups, deterministic within this job: the
        same ``kind`` (e.g. ``recording_id``) gives the same tag in every table of the job."""
        mac = hmac.new(self._lookup, b"\x00".join((self.job_id.encode(), kind.encode(), value.encode("utf-8"))), hashlib.sha256)
        return "h1:" + mac.hexdigest()[:32]  # 128 bits: no collision within a job, half the index size
