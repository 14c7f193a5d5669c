"""The CLI's progress bar for a remote generation (``darkroom.generate._Bar``), without a terminal."""

from __future__ import annotations

from darkroom.generate import _Bar


def shown(bar: _Bar) -> tuple[str, str, float, float | None]:
    task = bar.progress.tasks[0]
    return task.description, task.fields["count"], task.completed, task.total


def test_queued_shows_the_place_in_the_queue_not_0_of_none():
    bar = _Bar()
    assert shown(bar) == ("queued", "", 0, None)
    bar.update("queued", None, None, queue_position=2)
    assert shown(bar) == ("queued", "2 ahead", 0, None)
    bar.update("queued", None, None, queue_position=0)
    assert shown(bar)[1] == "next"
    bar.update("queued", None, None)  # generate_local's call, without a position
    assert shown(bar)[1] == ""


def test_steps_while_processing_then_filled_on_success():
    bar = _Bar()
    bar.update("queued", None, None, queue_position=1)
    bar.update("processing", None, None)
    assert shown(bar)[:2] == ("processing", "")  # the queue count is gone
    bar.update("processing", 7, 28)
    assert shown(bar) == ("generating", "7/28", 7, 28)
    bar.update("success", None, None)  # the last sample was step 7: the bar still ends full
    assert shown(bar) == ("done", "28/28", 28, 28)


def test_success_without_steps_fills_the_bar_and_a_requeue_starts_over():
    bar = _Bar()
    bar.update("success", None, None)
    _, count, completed, total = shown(bar)
    assert count == "" and completed == total == 1
    bar = _Bar()
    bar.update("processing", 3, 10)
    bar.update("queued", None, None, queue_position=1)  # its worker was lost
    assert shown(bar)[:3] == ("queued", "1 ahead", 0)
    bar.update("failed", None, None)
    assert shown(bar)[0] == "failed"
