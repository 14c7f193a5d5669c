"""A Server-Sent Events parser, free of I/O: text goes in, events come out.

It follows the HTML standard's "event stream interpretation" closely enough for any
conforming server, not only darkroom's: lines end in LF, CR or CRLF (also when a CRLF is
split across two chunks), a leading ``:`` marks a comment (keep-alives), ``data:`` lines
accumulate, a blank line dispatches, the ``id`` persists from event to event (it is what
a reconnecting client sends as ``Last-Event-ID``) and ``retry:`` sets the reconnection
hint. Keeping it I/O-free lets the sync and async clients share it and lets the tests
feed it any chunking they like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_BOM = "\ufeff"


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event.

    Attributes:
        event: the ``event:`` name, ``"message"`` when the server sent none.
        data: the ``data:`` lines joined with newlines, as text.
        id: the stream's last event id when this event was dispatched (it carries over
            from earlier events, as the standard says), or ``None`` before any.
        retry: the stream's latest ``retry:`` value in milliseconds, or ``None``.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """``data`` decoded as JSON.

        Raises:
            ValueError: ``data`` is not JSON.
        """
        return json.loads(self.data)


class SSEDecoder:
    """Feeds on the text of one event stream and returns the events it completes.

    Use one decoder per connection: ``feed(chunk)`` for each piece of text as it comes,
    in any chunking. An event still open when the stream ends is dropped, as the standard
    says, so a stream cut in the middle of an event never yields half of it.
    """

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.comments = 0  # keep-alives and other comment lines seen
        self._buffer = ""  # text after the last complete line
        self._after_cr = False  # the last chunk ended in CR: a leading LF belongs to it
        self._started = False  # a BOM is only skipped at the very start
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: str) -> list[ServerSentEvent]:
        """Take the next piece of the stream; return the events it completed, in order."""
        if not chunk:
            return []
        if not self._started:
            self._started = True
            chunk = chunk.removeprefix(_BOM)
        if self._after_cr and chunk.startswith("\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith("\r")
        text = self._buffer + chunk
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._buffer = lines.pop()  # the unfinished last line ("" after a line end)
        events = []
        for line in lines:
            event = self.feed_line(line)
            if event is not None:
                events.append(event)
        return events

    def feed_line(self, line: str) -> ServerSentEvent | None:
        """Take one line without its line end; return the event a blank line dispatches."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        # Any other field name is ignored, as the standard says.
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:  # e.g. the block that only carries "retry:"
            return None
        return ServerSentEvent(event, "\n".join(data), self.last_event_id, self.retry)
