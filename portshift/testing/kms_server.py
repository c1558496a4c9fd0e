"""moto's KMS in server mode over TLS on 127.0.0.1, for the tests of sealed job metadata.

moto (5.2) records ``DisableKey``/``EnableKey`` and ``ScheduleKeyDeletion`` but still answers
``Decrypt``, ``GenerateDataKey``, ``Encrypt`` and ``ReEncrypt`` with a key that is not enabled;
AWS KMS refuses them (``DisabledException``, ``KMSInvalidStateException``). The server started
here adds that one check inside moto's own backend, so a test disables the key through the
ordinary KMS API and sees what AWS answers. Everything else is moto's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .servers import LocalCA, free_port, stop_process, wait_port

_SERVER = r"""
import sys
from moto.core.exceptions import JsonRESTError
from moto.kms import models
from moto.kms.utils import _deserialize_ciphertext_blob

def _checked(name, key_args):
    original = getattr(models.KmsBackend, name)

    def call(self, *args, **kwargs):
        if name in ("decrypt", "re_encrypt"):
            blob = kwargs.get("ciphertext_blob", args[0] if args else None)
            key_ids = [_deserialize_ciphertext_blob(blob).key_id]
        else:
            key_ids = []
        key_ids += [kwargs[k] for k in key_args if kwargs.get(k)]
        for key_id in key_ids:
            key = self.keys.get(self.any_id_to_key_id(key_id))
            if key is not None and key.key_state == "Disabled":
                raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
            if key is not None and key.key_state == "PendingDeletion":
                raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
        return original(self, *args, **kwargs)

    setattr(models.KmsBackend, name, call)

for _name, _keys in (("decrypt", ()), ("re_encrypt", ("destination_key_id",)), ("encrypt", ("key_id",)),
                     ("generate_data_key", ("key_id",))):
    _checked(_name, _keys)

from moto.server import main
sys.argv[0] = "moto_server"
main()
"""


@dataclass
class KmsServer:
    url: str
    ca_pem: Path
    proc: subprocess.Popen[bytes]

    def client(self, region: str = "eu-west-1") -> Any:
        """A plain boto3 KMS client for the test itself (creates, disables, enables keys)."""
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=self.url,
            region_name=region,
            verify=str(self.ca_pem),
            aws_access_key_id="test",
            aws_secret_access_key="test",  # noqa: S106 - moto accepts any key
        )


@contextmanager
def moto_kms(ca: LocalCA, log: Path) -> Iterator[KmsServer]:
    """Start moto over TLS with the test CA's certificate; stop it on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, "-H", "127.0.0.1", "-p", str(port), "-c", str(ca.cert_pem), "-k", str(ca.key_pem)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_port(port, proc, what="moto (KMS)", log=log)
            yield KmsServer(f"https://127.0.0.1:{port}", ca.ca_pem, proc)
        finally:
            stop_process(proc)
