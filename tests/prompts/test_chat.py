"""The chat-endpoint path, against a real HTTP server on loopback.

The server is a small stand-in that speaks the OpenAI chat-completions protocol and
returns a fixed rewrite (no language model runs here): the test is of the protocol, the
request darkroom sends and the fallbacks, not of a model's writing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from darkroom.prompts import MAX_PROMPT_CHARS, PromptUpsampler
from darkroom.prompts.chat import SYSTEM_PROMPTS, clean_reply, completions_url

FIXED_REWRITE = "A red fox curled up asleep in fresh powder snow, soft blue morning light, telephoto wildlife photo."


class StandIn:
    """What the stand-in server does next, and what it was sent."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.reply = f'"{FIXED_REWRITE}"'
        self.requests: list[tuple[str, dict, dict]] = []


def make_handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append((self.path, dict(self.headers), body))
            if state.mode == "slow":
                time.sleep(1.0)  # longer than the client's timeout; bounded
            if state.mode == "error":
                self.send_response(500)
                self.end_headers()
                return
            if state.mode == "garbage":
                payload = b"<html>not json</html>"
            else:
                payload = json.dumps({
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": state.reply}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, StandIn]]:
    state = StandIn()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def encoder():
    from darkroom.safety import SentenceEncoder

    return SentenceEncoder()


def test_chat_endpoint_rewrites_the_prompt(server, encoder):
    url, state = server
    upsampler = PromptUpsampler(chat_url=url, chat_model="local-llm", chat_key="sk-test", encoder=encoder)
    result = upsampler.upsample("a red fox in snow", seed=11)
    assert result.prompt == FIXED_REWRITE and result.source == "chat" and result.fallback_reason is None
    path, headers, body = state.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "local-llm" and body["seed"] == 11 and body["temperature"] == 0
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPTS["general"]},
        {"role": "user", "content": "a red fox in snow"},
    ]
    upsampler.upsample("a red circle", seed=1, profile="shapes-world")
    assert state.requests[1][2]["messages"][0]["content"] == SYSTEM_PROMPTS["shapes-world"]
    upsampler.close()


def test_long_chat_reply_is_cut_to_the_limit(server, encoder):
    url, state = server
    state.reply = "word " * 1000
    result = PromptUpsampler(chat_url=url, chat_model="m", encoder=encoder).upsample("a cat", seed=1)
    assert result.source == "chat" and len(result.prompt) <= MAX_PROMPT_CHARS


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("slow", "chat endpoint timed out after 0.3 s"),
        ("error", "chat endpoint answered HTTP 500"),
        ("garbage", "chat endpoint gave a reply that is not a chat completion"),
    ],
)
def test_endpoint_failure_falls_back_to_offline_and_says_why(server, encoder, mode, reason, caplog):
    url, state = server
    state.mode = mode
    upsampler = PromptUpsampler(chat_url=url, chat_model="m", timeout_s=0.3, encoder=encoder)
    result = upsampler.upsample("a red circle", seed=5, profile="shapes-world")
    assert result.source == "offline" and result.fallback_reason == reason
    assert result.prompt == upsampler.offline("a red circle", seed=5, profile="shapes-world")
    assert reason in caplog.text


def test_unreachable_endpoint_falls_back(encoder):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    upsampler = PromptUpsampler(chat_url=f"http://127.0.0.1:{port}/v1", chat_model="m", timeout_s=2, encoder=encoder)
    result = upsampler.upsample("a blue star", seed=1, profile="shapes-world")
    assert result.source == "offline" and result.fallback_reason.startswith("chat endpoint unreachable")


def test_helpers():
    assert completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert clean_reply('Prompt: "a fox,\n in snow"') == "a fox, in snow"
    with pytest.raises(ValueError):
        PromptUpsampler(chat_url="http://h/v1")
