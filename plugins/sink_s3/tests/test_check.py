"""check(): the bucket, the credentials and the write permission, proven with the sink's own
least-privilege calls (a PutObject whose If-Match no object satisfies, an AbortMultipartUpload
for an upload that does not exist: nothing is created),
each failure one line of the type ``portshift run`` stops on before listing."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from portshift import AuthError, ConfigError, FatalError


def test_a_missing_bucket_is_a_configuration_error(make_sink: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"^\[sink\] bucket: s3://no-such-bucket-chk does not exist") as e:
        make_sink(bucket="no-such-bucket-chk").check()
    assert "\n" not in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"])
def test_refused_credentials_or_permission_are_an_auth_error(make_sink: Callable[..., Any], tls_proxy: Any, code: str) -> None:
    tls_proxy.rule = lambda req: tls_proxy.Action(respond=tls_proxy.error_response(403, "Forbidden", code))
    with pytest.raises(AuthError, match=code) as e:
        make_sink(endpoint_url=tls_proxy.url).check()
    assert "\n" not in str(e.value)
    assert len(tls_proxy.seen) == 1, "an auth failure is not retried"


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_denied_part_or_abort_is_an_auth_error_and_nothing_is_left(
    make_sink: Callable[..., Any], tls_proxy: Any, pending: Callable[[], list[Any]], method: str
) -> None:
    denied = tls_proxy.error_response(403, "Forbidden", "AccessDenied")
    tls_proxy.rule = lambda req: tls_proxy.Action(respond=denied) if req.method == method else None
    with pytest.raises(AuthError, match="AccessDenied") as e:
        make_sink(endpoint_url=tls_proxy.url).check()
    assert ("put object" if method == "PUT" else "abort multipart upload") in str(e.value)
    assert pending() == []


def test_an_unreachable_endpoint_is_fatal(make_sink: Callable[..., Any]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FatalError, match="could not connect"):
        make_sink(endpoint_url=f"https://127.0.0.1:{port}").check()
