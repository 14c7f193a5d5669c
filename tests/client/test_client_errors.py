"""Error mapping: every code of the contract to its exception, through both clients."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from darkroom.client import (
    AuthenticationError,
    ConflictError,
    ConnectionError,  # noqa: A004 - the SDK's own
    DarkroomError,
    InvalidRequest,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from darkroom.client._errors import parse_retry_after

CONTRACT_ERRORS = [
    (401, "unauthorized", AuthenticationError),
    (403, "invalid_signature", PermissionDenied),
    (404, "model_not_found", NotFoundError),
    (404, "request_not_found", NotFoundError),
    (409, "invalid_state", ConflictError),
    (413, "payload_too_large", PayloadTooLarge),
    (422, "invalid_field", InvalidRequest),
    (422, "invalid_input_image", InvalidRequest),
    (429, "rate_limited", RateLimited),
    (503, "model_unavailable", ServiceUnavailable),
    (500, "internal_error", ServerError),
]


@pytest.mark.parametrize(("status_code", "code", "cls"), CONTRACT_ERRORS)
def test_each_contract_error_maps_to_its_class(make_client, server, fx, status_code, code, cls):
    # A POST is not retried on these, so one answer is one error whatever the code.
    server.on("POST", "/requests", fx.error(status_code, code, "what went wrong", field="seed"))
    with pytest.raises(cls) as info:
        make_client(server).submit("darkroom-mini", prompt="a fox", seed=-1)
    err = info.value
    assert isinstance(err, DarkroomError)
    assert (err.status_code, err.code, err.message, err.field) == (
        status_code,
        code,
        "what went wrong",
        "seed",
    )
    assert err.response is not None and err.response.status_code == status_code
    assert str(err) == f"{status_code} {code}: what went wrong"
    assert len(server.requests) == 1


def test_service_unavailable_is_a_server_error():
    assert issubclass(ServiceUnavailable, ServerError)


def test_rate_limited_carries_retry_after(make_client, server, fx):
    server.on("POST", "/requests", fx.error(429, "rate_limited", headers={"Retry-After": "7"}))
    with pytest.raises(RateLimited) as info:
        make_client(server).submit("darkroom-mini", prompt="a fox")
    assert info.value.retry_after == 7.0


def test_a_body_without_the_error_object_still_maps_by_status(make_client, server):
    server.on("GET", "/requests/x", httpx.Response(502, text="<html>Bad Gateway</html>"))
    server.on("GET", "/models/m", httpx.Response(422, json={"detail": [{"loc": ["body"]}]}))
    client = make_client(server, max_retries=0)
    with pytest.raises(ServerError) as info:
        client.get("x")
    assert (info.value.status_code, info.value.code) == (502, "internal_error")
    assert "Bad Gateway" in info.value.message
    with pytest.raises(InvalidRequest) as info2:
        client.model("m")
    assert "loc" in info2.value.message and info2.value.code == "invalid_field"


def test_an_unmapped_client_error_is_the_root(make_client, server, fx):
    server.on("GET", "/models/m", fx.error(418, "teapot"))
    with pytest.raises(DarkroomError) as info:
        make_client(server).model("m")
    assert type(info.value) is DarkroomError
    assert (info.value.status_code, info.value.code) == (418, "teapot")


def test_transport_failure_is_translated_once_with_its_cause(make_client, server):
    server.on("GET", "/requests/x", httpx.ReadTimeout("timed out"))
    with pytest.raises(ConnectionError) as info:
        make_client(server, max_retries=0).get("x")
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert info.value.status_code is None
    assert "GET http://darkroom.test/api/v1/ie/requestqueue/apikey/requests/x" in info.value.message


def test_connection_error_message_hides_url_signatures(make_client, server):
    server.on("GET", "/files/a.png", httpx.ConnectError("refused"))
    with pytest.raises(ConnectionError) as info:
        make_client(server, max_retries=0).download("http://darkroom.test/files/a.png?sig=SECRET")
    assert "SECRET" not in str(info.value)


def test_sdk_connection_error_is_not_the_builtin():
    assert not issubclass(ConnectionError, OSError)


def test_parse_retry_after_forms():
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after(in_a_minute) <= 60
