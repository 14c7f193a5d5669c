"""Retries: idempotent GETs are resent on transient failures, POSTs only when unsent."""

from __future__ import annotations

import httpx
import pytest

from darkroom.client import Client, ConnectionError, RateLimited, ServerError, Status  # noqa: A004
from darkroom.client._base import Call


@pytest.mark.parametrize(
    "transient",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
        httpx.Response(502),
        httpx.Response(503, json={"error": {"code": "model_unavailable", "message": "x"}}),
        httpx.Response(504),
        httpx.Response(429, headers={"Retry-After": "0"}),
    ],
    ids=lambda t: type(t).__name__ if isinstance(t, Exception) else str(t.status_code),
)
def test_get_is_retried_on_transient_failures(make_client, server, fx, transient):
    server.on("GET", "/requests/x", transient, transient, fx.ok(fx.status_json()))
    status = make_client(server).get("x")
    assert status.status is Status.QUEUED
    assert len(server.requests) == 3


def test_get_gives_up_after_max_retries(make_client, server):
    server.on("GET", "/requests/x", httpx.Response(502))
    with pytest.raises(ServerError) as info:
        make_client(server, max_retries=3).get("x")
    assert info.value.status_code == 502
    assert len(server.requests) == 4


def test_get_gives_up_on_a_dead_connection(make_client, server):
    server.on("GET", "/models", httpx.ConnectError("refused"))
    with pytest.raises(ConnectionError):
        make_client(server).models()
    assert len(server.requests) == 3  # the default max_retries is 2


def test_max_retries_zero_sends_once(make_client, server):
    server.on("GET", "/requests/x", httpx.Response(503))
    with pytest.raises(ServerError):
        make_client(server, max_retries=0).get("x")
    assert len(server.requests) == 1


def test_internal_error_is_not_retried(make_client, server, fx):
    server.on("GET", "/requests/x", fx.error(500, "internal_error"))
    with pytest.raises(ServerError):
        make_client(server).get("x")
    assert len(server.requests) == 1


def test_a_long_retry_after_is_left_to_the_caller(make_client, server, fx):
    server.on("GET", "/requests/x", fx.error(429, "rate_limited", headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as info:
        make_client(server).get("x")
    assert info.value.retry_after == 3600.0
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [httpx.ReadTimeout("slow"), httpx.Response(502), httpx.Response(503), httpx.Response(429)],
    ids=["read-timeout", "502", "503", "429"],
)
def test_submit_is_not_resent_once_it_may_have_reached_the_server(make_client, server, fx, answer):
    server.on("POST", "/requests", answer, fx.ok(fx.status_json()))
    with pytest.raises((ConnectionError, ServerError, RateLimited)):
        make_client(server).submit("darkroom-mini", prompt="a fox")
    assert len(server.requests) == 1


def test_submit_is_resent_when_the_connection_was_never_made(make_client, server, fx):
    server.on("POST", "/requests", httpx.ConnectError("refused"), fx.ok(fx.status_json()))
    assert make_client(server).submit("darkroom-mini", prompt="a fox").status is Status.QUEUED
    assert len(server.requests) == 2
    assert server.requests[0].content == server.requests[1].content


def test_cancel_is_not_resent_after_a_read_timeout(make_client, server, fx):
    server.on("POST", "/requests/x/cancel", httpx.ReadTimeout("slow"), fx.ok(fx.status_json()))
    with pytest.raises(ConnectionError):
        make_client(server).cancel("x")
    assert len(server.requests) == 1


def test_backoff_doubles_and_honours_retry_after():
    client = Client("http://darkroom.test", api_key="k", max_retries=3, retry_backoff=0.5)
    try:
        get = Call(httpx.Request("GET", "http://darkroom.test/x"), lambda r: r)
        post = Call(httpx.Request("POST", "http://darkroom.test/x"), lambda r: r, idempotent=False)
        down = httpx.Response(503)
        assert [client._retry_delay(get, n, response=down) for n in range(4)] == [0.5, 1.0, 2.0, None]
        hinted = httpx.Response(429, headers={"Retry-After": "4"})
        assert client._retry_delay(get, 0, response=hinted) == 4.0
        assert client._retry_delay(get, 0, response=httpx.Response(200)) is None
        assert client._retry_delay(post, 0, response=down) is None
        assert client._retry_delay(post, 0, exc=httpx.ConnectTimeout("x")) == 0.5
        assert client._retry_delay(post, 0, exc=httpx.WriteError("x")) is None
        assert client._retry_delay(get, 0, exc=httpx.DecodingError("x")) is None
    finally:
        client.close()
