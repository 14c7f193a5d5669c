"""Webhooks: signed, durable, retried POSTs of a request's final status (docs/webhooks.md).

The store queues a delivery in the transaction that ends a request; the dispatcher,
running in the API process, sends it. This package never imports the API layer: the
API registers one body renderer per dialect.
"""

from darkroom.webhooks.dispatcher import Renderer, WebhookDispatcher
from darkroom.webhooks.schedule import RetrySchedule
from darkroom.webhooks.signing import generate_secret, secret_key, sign, signature_headers

__all__ = [
    "Renderer",
    "RetrySchedule",
    "WebhookDispatcher",
    "generate_secret",
    "secret_key",
    "sign",
    "signature_headers",
]
