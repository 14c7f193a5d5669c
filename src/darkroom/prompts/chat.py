"""Upsampling through an OpenAI-compatible chat-completions endpoint.

Works with any server that speaks ``POST {base}/chat/completions`` (vLLM, llama.cpp's
server, Ollama's ``/v1``, hosted APIs). Errors are translated once, here, into
:class:`ChatUnavailable` with a one-line reason the caller records.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

SYSTEM_PROMPTS = {
    "general": (
        "You rewrite prompts for FLUX, a text-to-image model that follows long, natural "
        "descriptions well. Rewrite the user's prompt into one richer prompt of 40 to 120 words: "
        "keep every subject, attribute, text and relation the user asked for, and do not add new "
        "subjects. Describe the main subject first, then its setting, then composition and camera "
        "or medium, lighting, colour palette and fine detail, in plain descriptive sentences. "
        "Keep the user's style if one is given; otherwise choose one that suits the subject. "
        "If the prompt is an instruction to edit an existing image, keep it an instruction, make it "
        "precise, and say that everything else stays unchanged. Never add nudity, gore or anything "
        "the user did not ask for. Reply with the rewritten prompt only: no preamble, no quotes."
    ),
    "shapes-world": (
        "You rewrite prompts for a tiny image model that only knows coloured shapes: circle, "
        "square, triangle, star, heart, ring; colours red, orange, yellow, green, blue, purple, "
        "pink, white, black; sizes small and large; positions left, right, top, bottom, centre; "
        "relations above, below, left of, right of; counts one to four; and plain or two-colour "
        "gradient backgrounds. Rewrite the user's prompt using only those words: keep what the "
        "user asked for and fill in a size, a position and a background where missing. Reply with "
        "one short line, the rewritten prompt only."
    ),
}

_LABEL = re.compile(r"^\s*(?:rewritten\s+)?prompt\s*:\s*", re.IGNORECASE)


class ChatUnavailable(Exception):
    """The endpoint timed out, failed or answered something unusable; ``str()`` says which."""


def completions_url(url: str) -> str:
    """``url`` itself if it ends in ``/chat/completions``, else that path appended to it."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def clean_reply(text: str) -> str:
    """Strip whitespace, a "Prompt:" label and wrapping quotes from a model's reply."""
    text = _LABEL.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return " ".join(text.split())


class ChatRewriter:
    """Asks one chat model to rewrite prompts.

    Args:
        url: the server's base URL (``http://127.0.0.1:8000/v1``) or its full
            ``/chat/completions`` URL.
        model: the model name the server expects.
        key: sent as ``Authorization: Bearer <key>`` when given.
        timeout_s: for the whole request.
        transport: an httpx transport (tests); default a real connection.
    """

    def __init__(self, url: str, model: str, *, key: str | None = None, timeout_s: float = 20.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = completions_url(url)
        self.model = model
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def close(self) -> None:
        self._client.close()

    def body(self, prompt: str, *, seed: int, profile: str) -> dict[str, Any]:
        """The request body: temperature 0 and the seed, for repeatable rewrites where the server allows."""
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPTS[profile]},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0,
            "seed": seed,
            "max_tokens": 400,
            "stream": False,
        }

    def rewrite(self, prompt: str, *, seed: int, profile: str) -> str:
        """The model's rewrite of ``prompt``; raises ChatUnavailable with the reason."""
        try:
            response = self._client.post(self.url, json=self.body(prompt, seed=seed, profile=profile))
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        except httpx.TimeoutException as exc:
            raise ChatUnavailable(f"chat endpoint timed out after {self.timeout_s:g} s") from exc
        except httpx.HTTPStatusError as exc:
            raise ChatUnavailable(f"chat endpoint answered HTTP {exc.response.status_code}") from exc
        except httpx.HTTPError as exc:
            raise ChatUnavailable(f"chat endpoint unreachable: {type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ChatUnavailable("chat endpoint gave a reply that is not a chat completion") from exc
        if not isinstance(content, str) or not clean_reply(content):
            raise ChatUnavailable("chat endpoint gave an empty rewrite")
        return clean_reply(content)
