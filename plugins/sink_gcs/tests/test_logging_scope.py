"""google-api-core's GOOGLE_SDK_PYTHON_LOGGING_SCOPE cannot route around portshift's logs.

With that variable set, ``google.api_core.client_logging.initialize_logging()`` (run when any
GAPIC client is built) gives the named logger DEBUG, its own stdout handler with a JSON
formatter that writes request extras, and no propagation: google-auth's "Making request..."
record then prints the service-account JWT grant. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import CanaryKey, Certs, Server, TokenServer

SCRIPT = r"""
import json, os, sys
from google.api_core import client_logging
mode = sys.argv[1]
cfg = json.loads(os.environ["TEST_CFG"])
if mode == "control":
    # no portshift: what the SDK does on its own
    client_logging.initialize_logging()
    import google.auth.transport.requests as gr, requests
    from google.oauth2 import service_account
    s = requests.Session(); s.trust_env = False; s.verify = cfg["ca"]
    creds = service_account.Credentials.from_service_account_info(
        json.loads(os.environ["PORTSHIFT_GCS_KEY"]), scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    creds.refresh(gr.Request(s))
    print("done")
    sys.exit(0)
if mode == "before":
    client_logging.initialize_logging()  # a GAPIC client was built before the sink
from portshift_sink_gcs import GcsOptions, GcsSink
from portshift.config import build_options
from portshift.hashing import HashingStream
opts = build_options(GcsOptions, {"bucket": "exports", "api_endpoint": cfg["endpoint"], "ca_bundle": cfg["ca"],
                                  "prefix": "scope", "chunk_size": "256KiB"}, "sink")
if mode == "after":
    client_logging.initialize_logging()  # a GAPIC client built after the plugin was loaded
sink = GcsSink(opts)
sink.put("scoped/a.bin", HashingStream(iter([b"x" * 300000])), 300000)
sink.put("scoped/b.bin", HashingStream(iter([b"y" * 10])), 10)
print("done")
"""


def run(mode: str, scope: str, emulator: Server, certs: Certs, key: CanaryKey) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTSHIFT_", "GOOGLE_"))}
    env.update(
        {
            "GOOGLE_SDK_PYTHON_LOGGING_SCOPE": scope,
            "PORTSHIFT_GCS_KEY": key.json,
            "TEST_CFG": json.dumps({"endpoint": emulator.endpoint, "ca": str(certs.ca_pem)}),
        }
    )
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=120)


def leaked(out: str, key: CanaryKey, tokens: TokenServer) -> list[str]:
    found = [f for f in key.forms() if f in out]
    found += [a[:20] for a in tokens.assertions if a and a in out]
    if '"assertion"' in out:
        found.append("assertion")
    return found


@pytest.mark.parametrize("scope", ["google", "google.auth.transport.requests"])
def test_control_the_sdk_alone_prints_the_grant(
    emulator: Server, certs: Certs, token_server: TokenServer, canary: CanaryKey, scope: str
) -> None:
    """Proof that the channel exists (and that this test can see it)."""
    proc = run("control", scope, emulator, certs, canary)
    assert "done" in proc.stdout, proc.stderr[-2000:]
    assert "Making request" in proc.stdout + proc.stderr
    assert leaked(proc.stdout + proc.stderr, canary, token_server)


@pytest.mark.parametrize("mode", ["before", "after"])
@pytest.mark.parametrize("scope", ["google", "google.auth.transport.requests"])
def test_with_the_plugin_nothing_is_printed(
    emulator: Server, certs: Certs, token_server: TokenServer, canary: CanaryKey, scope: str, mode: str
) -> None:
    n = len(token_server.assertions)
    proc = run(mode, scope, emulator, certs, canary)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]
    assert len(token_server.assertions) == n + 1, "the grant was exchanged"
    out = proc.stdout + proc.stderr
    assert "Making request" not in out and "httpRequest" not in out
    assert leaked(out, canary, token_server) == []
