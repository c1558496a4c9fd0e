"""Detached Ed25519 signatures of the manifest, checkable with stock OpenSSL.

Sign: with ``[job] signing_key_file`` (or ``PORTSHIFT_SIGNING_KEY``) holding an Ed25519 private
key in PEM, the run writes ``portshift-manifest.txt.sig`` (the raw 64-byte signature) beside the
manifest. Check, with no portshift::

    openssl pkeyutl -verify -pubin -inkey manifest-signing.pub.pem -rawin \\
        -in portshift-manifest.txt -sigfile portshift-manifest.txt.sig
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, VerificationError
from .secrets import Secret, read_secret_file, secret_from_env

ENV = "PORTSHIFT_SIGNING_KEY"


def load_signing_key(path: Path | None) -> Secret | None:
    """The signing key from the job file's ``signing_key_file`` or the environment, validated."""
    if path is not None:
        secret = Secret(read_secret_file(Path(path), "[job] signing_key_file"), "signing_key")
    elif (from_env := secret_from_env(ENV, "signing_key")) is not None:
        secret = from_env
    else:
        return None
    _private_key(secret)
    return secret


def _private_key(secret: Secret):  # noqa: ANN202 - cryptography type
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(secret.reveal().encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            "the manifest signing key is not an unencrypted PEM private key",
            hint="create one with: openssl genpkey -algorithm ed25519 -out manifest-signing.pem",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the manifest signing key must be an Ed25519 key", hint="openssl genpkey -algorithm ed25519")
    return key


def sign(secret: Secret, data: bytes) -> bytes:
    return _private_key(secret).sign(data)


def public_key_pem(secret: Secret) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return _private_key(secret).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def verify_signature(public_key_path: Path, data: bytes, signature: bytes) -> None:
    """Raise VerificationError unless ``signature`` is a valid Ed25519 signature of ``data``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(public_key_path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"--public-key {public_key_path} does not exist") from None
    except ValueError:
        raise ConfigError(f"--public-key {public_key_path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"--public-key {public_key_path} is not an Ed25519 public key")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise VerificationError("the manifest signature does not match: the manifest or the signature was changed") from None
