"""The SDK's Server-Sent Events parser, fed by hand in every chunking."""

from __future__ import annotations

import pytest

from darkroom.client._sse import ServerSentEvent, SSEDecoder

# darkroom's own stream, as docs/events.md shows it: retry, ids, names, JSON, a comment.
STREAM = (
    "retry: 2000\n\n"
    'id: 1\nevent: status\ndata: {"status":"queued","queue_position":1,"progress":null}\n\n'
    ": keep-alive\n\n"
    'id: 2\nevent: progress\ndata: {"step":3,"total":28}\n\n'
    'id: 3\nevent: done\ndata: {"request_id":"r","status":"success"}\n\n'
)


def feed_all(text: str, size: int) -> tuple[SSEDecoder, list[ServerSentEvent]]:
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(text), size):
        events += decoder.feed(text[i : i + size])
    return decoder, events


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_darkroom_stream_in_any_chunking(size):
    decoder, events = feed_all(STREAM, size)
    assert [(e.event, e.id) for e in events] == [("status", "1"), ("progress", "2"), ("done", "3")]
    assert events[0].json() == {"status": "queued", "queue_position": 1, "progress": None}
    assert events[1].json() == {"step": 3, "total": 28}
    assert all(e.retry == 2000 for e in events)
    assert decoder.retry == 2000 and decoder.last_event_id == "3" and decoder.comments == 1


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
@pytest.mark.parametrize("size", [1, 2, 5, 10_000])
def test_every_line_ending_even_split_across_chunks(newline, size):
    text = STREAM.replace("\n", newline)
    _, events = feed_all(text, size)
    assert [e.event for e in events] == ["status", "progress", "done"]
    assert events[2].json()["status"] == "success"


def test_crlf_split_between_chunks_is_one_line_end():
    decoder = SSEDecoder()
    assert decoder.feed("data: a\r") == []
    assert decoder.feed("\ndata: b\r") == []
    [event] = decoder.feed("\n\r\n")
    assert event.data == "a\nb"


def test_multi_line_data_is_joined_with_newlines_and_a_single_space_is_stripped():
    decoder = SSEDecoder()
    [event] = decoder.feed("data:first\ndata:  second\ndata\n\n")
    assert event.data == "first\n second\n"
    assert event.event == "message" and event.id is None


def test_comments_unknown_fields_and_a_bad_retry_are_ignored():
    decoder = SSEDecoder()
    events = decoder.feed(": hello\nfoo: bar\nretry: soon\nretry: 12a\ndata: x\n\n")
    assert [e.data for e in events] == ["x"]
    assert decoder.retry is None and decoder.comments == 1


def test_a_block_without_data_dispatches_nothing_and_resets_the_name():
    decoder = SSEDecoder()
    assert decoder.feed("event: status\nretry: 50\n\n") == []
    [event] = decoder.feed("data: 1\n\n")
    assert event.event == "message" and event.retry == 50


def test_the_id_carries_over_and_an_empty_id_resets_it():
    decoder = SSEDecoder()
    first, second = decoder.feed("id: 7\ndata: a\n\ndata: b\n\n")
    assert first.id == second.id == "7"
    [third] = decoder.feed("id\ndata: c\n\n")
    assert third.id == "" and decoder.last_event_id == ""
    decoder.feed("id: 8\0\ndata: d\n\n")  # an id with NUL is ignored
    assert decoder.last_event_id == ""


def test_an_event_left_open_when_the_stream_ends_is_never_yielded():
    decoder = SSEDecoder()
    assert decoder.feed('event: done\ndata: {"status":') == []
    assert decoder.feed("") == []


def test_a_leading_byte_order_mark_is_skipped_once():
    decoder = SSEDecoder()
    [event] = decoder.feed("\ufeffdata: x\n\n")
    assert event.data == "x"
    # Anywhere else it is part of the field name, an unknown one.
    assert decoder.feed("\ufeffdata: y\n\n") == []


def test_json_of_data_that_is_not_json_raises_value_error():
    with pytest.raises(ValueError):
        ServerSentEvent("status", "{not json").json()
