"""The ``kms`` key provider: AWS KMS wraps each job's data key (docs/byok.md).

``[state] key = "kms:arn:aws:kms:eu-west-1:111122223333:key/<id>"``. A data key comes from
``GenerateDataKey`` (AES_256) and is unwrapped with ``Decrypt``, both with the encryption context
``{"portshift_job": <job id>}``, so a wrapped key only opens for its own job and CloudTrail names
the job of every use. The customer's key policy grants portshift's role those two actions only
(``ReEncrypt*`` and ``Encrypt`` only for ``portshift state rewrap``).

The client is built like the S3 sink's: a private botocore session, portshift's own TLS context
(TLS >= 1.2, the system store plus ``ca_bundle``; ``AWS_CA_BUNDLE`` and the like ignored), no
proxy, ``AWS_ENDPOINT_URL*`` ignored (``endpoint_url`` only from ``[state] key_endpoint_url``),
one attempt per call. Credentials: those given with the job (``key_access_key_id``... on
``--secrets-from-stdin``: how ``portshift serve`` hands them to a worker), else
``PORTSHIFT_AWS_ACCESS_KEY_ID``/``..._SECRET_ACCESS_KEY``/``..._SESSION_TOKEN`` when set, else the
AWS credential chain (a role).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config

from portshift import ConfigError, KeyProvider, KeyUnavailableError, Secret, register_mask, ssl_context

from .client import OneServiceLoader, _install_https_session, pin_sdk_loggers, system_ca_file
from .options import ENV_ACCESS_KEY_ID, ENV_SECRET_ACCESS_KEY, ENV_SESSION_TOKEN


def secret_from_env(env: str, name: str) -> Secret | None:
    value = os.environ.get(env)
    return Secret(value, name) if value else None


_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:(key|alias)/[A-Za-z0-9/_-]+$")
CONTEXT_KEY = "portshift_job"

#: KMS answers that mean "the customer's key is not available to portshift"
_UNAVAILABLE = {
    "DisabledException": "the key is disabled",
    "KMSInvalidStateException": "the key is pending deletion or not usable",
    "NotFoundException": "the key does not exist",
    "AccessDeniedException": "the key policy does not allow portshift",
    "InvalidCiphertextException": "the wrapped data key does not belong to this key and job",
    "IncorrectKeyException": "the wrapped data key belongs to another key",
}


class AwsKmsKey(KeyProvider):
    """A customer master key in AWS KMS, named by its ARN (key or alias)."""

    name = "kms"

    def __init__(
        self,
        ref: str,
        *,
        endpoint_url: str | None = None,
        ca_bundle: Path | None = None,
        credentials: dict[str, Secret] | None = None,
    ) -> None:
        super().__init__(ref, endpoint_url=endpoint_url, ca_bundle=ca_bundle, credentials=credentials)
        m = _ARN.match(ref)
        if not m:
            raise ConfigError(
                f"[state] key: kms:{ref[:100]} is not the ARN of a KMS key",
                hint='use "kms:arn:aws:kms:<region>:<account>:key/<key id>" (or an alias ARN)',
            )
        if endpoint_url is not None and not endpoint_url.lower().startswith("https://"):
            raise ConfigError("[state] key_endpoint_url must be an https:// URL")
        self.region = m.group(1)
        self._client: Any = None
        self._lock = threading.Lock()

    def _kms(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _build(self) -> Any:
        pin_sdk_loggers()
        verify = str(self.ca_bundle) if self.ca_bundle is not None else system_ca_file()
        context = ssl_context(self.ca_bundle)
        core = botocore.session.Session(
            session_vars={"data_path": (None, None, None, None), "ca_bundle": (None, None, None, None)}
        )
        kwargs: dict[str, Any] = {}
        access, secret = secret_from_env(ENV_ACCESS_KEY_ID, "access_key_id"), secret_from_env(ENV_SECRET_ACCESS_KEY, "secret")
        token = secret_from_env(ENV_SESSION_TOKEN, "session_token")
        if "access_key_id" in self.credentials:  # given with the job (--secrets-from-stdin): these, not the environment's
            access, secret = self.credentials["access_key_id"], self.credentials.get("secret_access_key")
            token = self.credentials.get("session_token")
        if access is not None and secret is not None:
            core.register_component("data_loader", OneServiceLoader(("kms",)))  # no chain: KMS clients only
            kwargs = {"aws_access_key_id": access.reveal(), "aws_secret_access_key": secret.reveal()}
            if token is not None:
                kwargs["aws_session_token"] = token.reveal()
        config = Config(
            region_name=self.region,
            ignore_configured_endpoint_urls=True,
            proxies={},
            connect_timeout=15,
            read_timeout=30,
            retries={"mode": "standard", "total_max_attempts": 3},
            use_fips_endpoint=False,
            use_dualstack_endpoint=False,
        )
        try:
            client = core.create_client(
                "kms",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                use_ssl=True,
                verify=verify,
                config=config,
                **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - never the SDK's text
            raise ConfigError(f"cannot build the KMS client for {self.label} ({type(e).__name__})") from None
        finally:
            kwargs.clear()
        if access is None:
            creds = core.get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                for value in (frozen.access_key, frozen.secret_key, frozen.token):
                    if value:
                        register_mask(value)
        _install_https_session(client, context, verify, 4)
        return client

    def _call(self, operation: str, job_id: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self._kms(), operation)(**kwargs)  # type: ignore[no-any-return]
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - one line naming the key, never the SDK's request
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "") if hasattr(e, "response") else ""
            why = _UNAVAILABLE.get(code) or (f"KMS answered {code}" if code else f"KMS could not be reached ({type(e).__name__})")
            error = KeyUnavailableError(
                f"the customer's key {self.label} is not available for job {job_id}: {why}",
                hint="the key's owner can enable it again or grant access; nothing recorded is lost",
            )
            error.whole_key = code not in ("InvalidCiphertextException", "IncorrectKeyException")
            raise error from None

    def _context(self, job_id: str) -> dict[str, str]:
        return {CONTEXT_KEY: job_id}

    def new_data_key(self, job_id: str) -> tuple[bytes, bytes]:
        out = self._call("generate_data_key", job_id, KeyId=self.ref, KeySpec="AES_256", EncryptionContext=self._context(job_id))
        return bytes(out["Plaintext"]), bytes(out["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, job_id: str) -> bytes:
        out = self._call("decrypt", job_id, CiphertextBlob=wrapped, KeyId=self.ref, EncryptionContext=self._context(job_id))
        return bytes(out["Plaintext"])

    def wrap(self, data_key: bytes, job_id: str) -> bytes:
        out = self._call("encrypt", job_id, KeyId=self.ref, Plaintext=data_key, EncryptionContext=self._context(job_id))
        return bytes(out["CiphertextBlob"])

    def rewrap(self, wrapped: bytes, job_id: str, new: KeyProvider) -> bytes:
        """KMS to KMS: ``ReEncrypt`` (the data key never leaves KMS in clear)."""
        if not isinstance(new, AwsKmsKey) or new.region != self.region or new.endpoint_url != self.endpoint_url:
            return super().rewrap(wrapped, job_id, new)
        context = self._context(job_id)
        out = self._call(
            "re_encrypt",
            job_id,
            CiphertextBlob=wrapped,
            SourceKeyId=self.ref,
            SourceEncryptionContext=context,
            DestinationKeyId=new.ref,
            DestinationEncryptionContext=context,
        )
        return bytes(out["CiphertextBlob"])
