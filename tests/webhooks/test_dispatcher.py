"""The dispatcher against a real SQLite store and a mock HTTP transport (no sockets)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from darkroom.domain import Request
from darkroom.netguard import NetGuard
from darkroom.store import Store
from darkroom.store.webhooks import DeliveryStatus, WebhookDelivery
from darkroom.webhooks import RetrySchedule, WebhookDispatcher

from _webhook_helpers import HOOK, Submit, reference_verify

SERVER_SECRET = "whsec_c2VydmVyLXdpZGUtc2VjcmV0LWZvci10ZXN0cw=="
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(sqlite_store: Store) -> Store:  # the dispatcher's logic does not depend on the backend
    return sqlite_store


class Receiver:
    """A scripted receiver: answers with ``script`` in turn (the last one repeats)."""

    def __init__(self, *script: int | Exception) -> None:
        self.script = list(script) or [200]
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.script[min(len(self.seen), len(self.script)) - 1]
        if isinstance(answer, Exception):
            raise answer
        headers = {"location": "http://elsewhere.test/"} if 300 <= answer < 400 else None
        return httpx.Response(answer, headers=headers, text="nope" if answer >= 400 else "")


def render(request: Request) -> dict:
    return {"request_id": request.id, "status": request.status.value, "shape": "primary"}


@pytest.fixture
def make_dispatcher(store: Store) -> Iterator[Callable[..., WebhookDispatcher]]:
    made: list[WebhookDispatcher] = []

    def make(receiver: Receiver | None = None, attempts: int = 3, base_s: float = 0.02, **kwargs) -> WebhookDispatcher:
        client = httpx.Client(transport=httpx.MockTransport(receiver)) if receiver else None
        d = WebhookDispatcher(store, server_secret=SERVER_SECRET, guard=NetGuard(), client=client,
                              schedule=RetrySchedule(max_attempts=attempts, base_s=base_s, max_s=base_s * 2, jitter=0),
                              timeout_s=2, **kwargs)
        d.register("requestqueue", render)
        d.register("bfl", lambda r: {"id": r.id, "status": "Ready"}, secret_header=True)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def finish(store: Store, submit: Submit, **kwargs) -> Request:
    request = submit(**kwargs)
    assert store.claim_request("w", ["m"], 30) is not None
    store.finish_request(request.id, "w", {"media": []})
    return request


def only(store: Store, request_id: str) -> WebhookDelivery:
    [delivery] = store.list_webhook_deliveries(request_id)
    return delivery


def test_delivers_signed_status(store: Store, submit: Submit, make_dispatcher) -> None:
    receiver = Receiver(200)
    request = finish(store, submit, secret="client-secret")
    assert make_dispatcher(receiver).deliver_due() == 1
    [sent] = receiver.seen
    assert str(sent.url) == HOOK and sent.method == "POST"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {"request_id": request.id, "status": "success", "shape": "primary"}
    delivery = only(store, request.id)
    assert sent.headers["webhook-id"] == delivery.id
    assert abs(int(sent.headers["webhook-timestamp"]) - time.time()) < 60
    assert reference_verify("client-secret", dict(sent.headers), sent.content)
    assert not reference_verify(SERVER_SECRET, dict(sent.headers), sent.content)
    assert "x-webhook-secret" not in sent.headers  # only the BFL dialect sends it
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.DELIVERED, 1, 200)
    assert delivery.delivered_at is not None
    assert make_dispatcher(receiver).deliver_due() == 0  # nothing left


def test_server_secret_without_a_request_secret(store: Store, submit: Submit, make_dispatcher) -> None:
    receiver = Receiver(204)
    finish(store, submit)
    make_dispatcher(receiver).deliver_due()
    [sent] = receiver.seen
    assert reference_verify(SERVER_SECRET, dict(sent.headers), sent.content)


def test_retries_until_success_with_a_stable_id(store: Store, submit: Submit, make_dispatcher) -> None:
    receiver = Receiver(500, 503, 200)
    request = finish(store, submit)
    dispatcher = make_dispatcher(receiver, base_s=0.5)
    # One attempt, however long it takes (deliver_due would go on to the retry once it is due).
    [claimed] = store.claim_webhook_deliveries(dispatcher.owner, lease_s=dispatcher.lease_s, limit=1)
    dispatcher.deliver(claimed)
    delivery = only(store, request.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.PENDING, 1, 500)
    assert delivery.last_error == "HTTP 500: nope"
    assert delivery.next_attempt_at == pytest.approx(delivery.updated_at + 0.5)  # the first retry's delay
    delivery = _drain(dispatcher, store, request.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
        DeliveryStatus.DELIVERED, 3, 200, None)
    assert len({r.headers["webhook-id"] for r in receiver.seen}) == 1 and len(receiver.seen) == 3


def _drain(dispatcher: WebhookDispatcher, store: Store, request_id: str) -> WebhookDelivery:
    deadline = time.monotonic() + 120  # generous: the retries are due within seconds
    while time.monotonic() < deadline:
        dispatcher.deliver_due()
        delivery = only(store, request_id)
        if delivery.status is not DeliveryStatus.PENDING:
            return delivery
        time.sleep(0.02)
    raise AssertionError("delivery still pending")


def test_gives_up_after_the_last_attempt(store: Store, submit: Submit, make_dispatcher) -> None:
    receiver = Receiver(httpx.ConnectError("connection refused"))
    request = finish(store, submit)
    delivery = _drain(make_dispatcher(receiver, attempts=3), store, request.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.FAILED, 3, None)
    assert delivery.last_error == "ConnectError: connection refused"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.ReadTimeout("slow"), "timed out after 2 s"),
        (302, "HTTP 302: redirects are not followed (to http://elsewhere.test/)"),
    ],
)
def test_timeouts_and_redirects_are_retried(store: Store, submit: Submit, make_dispatcher, answer, error) -> None:
    request = finish(store, submit)
    make_dispatcher(Receiver(answer)).deliver_due()
    delivery = only(store, request.id)
    assert (delivery.status, delivery.last_error) == (DeliveryStatus.PENDING, error)


def test_gone_stops_at_once(store: Store, submit: Submit, make_dispatcher) -> None:
    request = finish(store, submit)
    make_dispatcher(Receiver(410), attempts=10).deliver_due()
    delivery = only(store, request.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.FAILED, 1, 410)


def test_bfl_dialect_shape_and_secret_header(store: Store, submit: Submit, make_dispatcher) -> None:
    receiver = Receiver(200)
    with_secret = finish(store, submit, dialect="bfl", secret="bfl-secret")
    without = finish(store, submit, dialect="bfl")
    unknown = finish(store, submit, dialect="openai")
    make_dispatcher(receiver).deliver_due()
    by_id = {json.loads(r.content).get("id") or json.loads(r.content)["request_id"]: r for r in receiver.seen}
    assert by_id[with_secret.id].headers["x-webhook-secret"] == "bfl-secret"
    assert json.loads(by_id[with_secret.id].content) == {"id": with_secret.id, "status": "Ready"}
    assert "x-webhook-secret" not in by_id[without.id].headers  # never the server-wide secret
    assert json.loads(by_id[unknown.id].content)["shape"] == "primary"  # fallback renderer


def test_renderer_errors_are_recorded_not_raised(store: Store, submit: Submit, make_dispatcher) -> None:
    request = finish(store, submit)
    dispatcher = make_dispatcher(Receiver(200))
    dispatcher.register("requestqueue", lambda r: 1 / 0)
    dispatcher.deliver_due()
    delivery = only(store, request.id)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.last_error == "internal error: ZeroDivisionError: division by zero"


def test_guard_refuses_at_send_time(store: Store, submit: Submit, make_dispatcher) -> None:
    # Stored without the submit-time check (as if the allow-list changed since): the real,
    # guarded client refuses before connecting.
    request = finish(store, submit, webhook_url="http://127.0.0.1:9/hook")
    make_dispatcher(None).deliver_due()
    delivery = only(store, request.id)
    assert delivery.status is DeliveryStatus.PENDING and delivery.last_status_code is None
    assert delivery.last_error.startswith("url_not_allowed: url: 127.0.0.1 is a loopback address")


def test_background_thread_delivers_and_stops(store: Store, submit: Submit, make_dispatcher) -> None:
    receiver = Receiver(500, 200)
    dispatcher = make_dispatcher(receiver, poll_interval_s=0.02, concurrency=2)
    dispatcher.start()
    requests = [finish(store, submit) for _ in range(3)]
    deadline = time.monotonic() + 120  # generous: only a hung dispatcher takes this long
    while time.monotonic() < deadline:
        if all(only(store, r.id).status is DeliveryStatus.DELIVERED for r in requests):
            break
        time.sleep(0.02)
    dispatcher.stop()
    assert [only(store, r.id).status for r in requests] == [DeliveryStatus.DELIVERED] * 3
    assert sum(only(store, r.id).attempts for r in requests) == 4  # the first POST got the 500


def test_stop_releases_leases(store: Store, submit: Submit, make_dispatcher) -> None:
    finish(store, submit)
    dispatcher = make_dispatcher(Receiver(200))
    assert len(store.claim_webhook_deliveries(dispatcher.owner, lease_s=300, limit=5)) == 1
    dispatcher.stop()
    assert len(store.claim_webhook_deliveries("other", lease_s=300, limit=5)) == 1
