"""Prompt upsampling: rewrite a prompt into a richer one before generation.

    upsampler = PromptUpsampler(chat_url=..., chat_model=..., chat_key=...)  # or no chat
    result = upsampler.upsample(prompt, seed=42, profile="general")
    result.prompt        # what to generate from (<= MAX_PROMPT_CHARS), and report
    result.source        # "chat" or "offline"
    result.fallback_reason  # why the chat endpoint was not used, when it was configured

With a chat endpoint configured, an OpenAI-compatible model rewrites the prompt; when it
times out or fails, the offline enhancer answers and the reason is recorded. The offline
enhancer is deterministic for a seed; its profile is chosen per model by the registry
(``general``, or ``shapes-world`` for darkroom-mini). Nothing heavy loads until used.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

from darkroom.prompts.chat import ChatRewriter, ChatUnavailable
from darkroom.prompts.general import GeneralEnhancer
from darkroom.prompts.shapes import enhance_shapes
from darkroom.safety.encoder import SentenceEncoder

__all__ = ["MAX_PROMPT_CHARS", "PROFILES", "PromptUpsampler", "Upsampled", "truncate"]

logger = logging.getLogger(__name__)

PROFILES = ("general", "shapes-world")
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class Upsampled:
    """An upsampled prompt.

    Attributes:
        prompt: the prompt to generate from (at most MAX_PROMPT_CHARS characters).
        source: ``"chat"`` (the configured endpoint wrote it) or ``"offline"``.
        fallback_reason: why a configured chat endpoint was not used; None otherwise.
    """

    prompt: str
    source: str
    fallback_reason: str | None = None


def truncate(text: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, at a word boundary where there is one."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;")


class PromptUpsampler:
    """Rewrites prompts; one per worker.

    Args:
        chat_url, chat_model, chat_key: an OpenAI-compatible chat endpoint; used when both
            url and model are given, else upsampling is offline only.
        timeout_s: for one chat request.
        encoder: the sentence encoder (pass the worker's shared one); default a private one.
        transport: an httpx transport for the chat client (tests).
    """

    def __init__(
        self,
        *,
        chat_url: str | None = None,
        chat_model: str | None = None,
        chat_key: str | None = None,
        timeout_s: float = 20.0,
        encoder: SentenceEncoder | None = None,
        transport=None,  # noqa: ANN001 - httpx.BaseTransport; httpx is imported by chat.py only
    ) -> None:
        if bool(chat_url) != bool(chat_model):
            raise ValueError("a chat endpoint needs both chat_url and chat_model")
        self.chat = (
            ChatRewriter(chat_url, chat_model, key=chat_key, timeout_s=timeout_s, transport=transport)
            if chat_url and chat_model
            else None
        )
        self.encoder = encoder or SentenceEncoder()
        self._general: GeneralEnhancer | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self.chat is not None:
            self.chat.close()

    def upsample(self, prompt: str, *, seed: int, profile: str = "general") -> Upsampled:
        """Rewrite ``prompt``. Raises ValueError for an unknown profile; never fails otherwise."""
        if profile not in PROFILES:
            raise ValueError(f"unknown prompt profile {profile!r}; known: {', '.join(PROFILES)}")
        reason = None
        if self.chat is not None:
            try:
                return Upsampled(truncate(self.chat.rewrite(prompt, seed=seed, profile=profile)), "chat")
            except ChatUnavailable as exc:
                reason = str(exc)
                logger.warning("prompt upsampling fell back to the offline enhancer: %s", reason)
        return Upsampled(truncate(self.offline(prompt, seed=seed, profile=profile)), "offline", reason)

    def offline(self, prompt: str, *, seed: int, profile: str = "general") -> str:
        """The offline enhancer's rewrite: deterministic for (prompt, seed, profile)."""
        # random.Random seeds from a str through SHA-512: stable across runs and machines.
        rng = random.Random(f"{seed}\x00{profile}\x00{prompt}")
        if profile == "shapes-world":
            return enhance_shapes(prompt, rng)
        return self._general_enhancer().enhance(prompt, rng)

    def _general_enhancer(self) -> GeneralEnhancer:
        if self._general is None:
            with self._lock:
                if self._general is None:
                    self._general = GeneralEnhancer(self.encoder)
        return self._general
