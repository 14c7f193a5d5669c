"""The worker registry behind model info's ``qworkers``."""

from __future__ import annotations

from darkroom.store import Store

T0 = 1_000.0


def test_active_workers(store: Store) -> None:
    store.register_worker("w1", ["a", "b"], now=T0)
    store.register_worker("w2", ["b"], now=T0)
    assert store.active_workers(now=T0 + 1) == 2
    assert store.active_workers("a", now=T0 + 1) == 1
    assert store.active_workers("b", now=T0 + 1) == 2
    assert store.active_workers("c", now=T0 + 1) == 0
    assert store.active_workers("b", within_s=30, now=T0 + 31) == 0  # silent too long
    assert store.heartbeat_worker("w2", now=T0 + 30)
    assert store.active_workers("b", within_s=30, now=T0 + 31) == 1
    store.remove_worker("w2")
    assert store.active_workers(now=T0 + 31) == 0
    assert not store.heartbeat_worker("w2", now=T0 + 32)


def test_register_again_replaces_models(store: Store) -> None:
    store.register_worker("w1", ["a"], now=T0)
    store.register_worker("w1", ["c"], now=T0 + 1)
    assert store.active_workers("a", now=T0 + 2) == 0
    assert store.active_workers("c", now=T0 + 2) == 1
