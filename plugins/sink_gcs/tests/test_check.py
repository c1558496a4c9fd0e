"""check(): the bucket, the credentials and the create permission, proven by opening and
cancelling a resumable session; each failure one line of the type ``portshift run`` stops on
before listing."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
from google.oauth2.credentials import Credentials as TokenCredentials
from portshift_sink_gcs import GcsSink

from portshift import AuthError, ConfigError, FatalError

from .conftest import Certs, Server, TLSServer, server_context


def test_a_missing_bucket_is_a_configuration_error(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    with pytest.raises(ConfigError, match=r"^\[sink\] bucket: gs://no-such-bucket/tests does not exist") as e:
        make_sink(bucket="no-such-bucket").check()
    assert e.value.exit_code == 2


@pytest.mark.parametrize(("status", "reason"), [(401, "authError"), (403, "forbidden")])
def test_refused_credentials_or_permission_are_an_auth_error(
    certs: Certs, make_sink: Callable[..., GcsSink], status: int, reason: str
) -> None:
    body = json.dumps({"error": {"code": status, "message": "no", "errors": [{"reason": reason}]}}).encode()
    server = TLSServer(server_context(certs.ca), lambda method, path, headers, data: (status, {}, body))
    try:
        # a 401 makes google-auth try to refresh the token once: a bare token cannot be refreshed
        creds = TokenCredentials(token="ya29.test-token") if status == 401 else None
        with pytest.raises(AuthError) as e:
            make_sink(api_endpoint=server.url, _credentials=creds).check()
        assert "\n" not in str(e.value) and "ya29" not in str(e.value)
        if status == 403:
            assert e.value.status == 403 and "forbidden" in str(e.value)
        assert len(server.requests) == 1, "an auth failure is not retried"
    finally:
        server.close()


def test_an_unreachable_endpoint_is_fatal(make_sink: Callable[..., GcsSink]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FatalError, match="connection to GCS failed"):
        make_sink(api_endpoint=f"https://127.0.0.1:{port}").check()
