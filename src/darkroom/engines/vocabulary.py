"""The words a model knows, and the words of a prompt it does not.

A small model trained on a closed world (darkroom-mini: coloured shapes) reads any other word as
noise and quietly draws something unrelated. A registry entry may name a word list, one word a line
(``#`` starts a comment), relative to the model's folder::

    [models.darkroom-mini.options]
    vocabulary = "vocabulary.txt"

and the worker then adds to the outcome ``"warnings": ["words darkroom-mini does not know: cat,
sofa"]``; the request still succeeds. Torch-free.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# a word: letters and digits, with inner hyphens or apostrophes ("five-pointed", "don't")
_WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order."""
    return _WORD.findall(text.lower())


def unknown_words(prompt: str, vocabulary: Collection[str]) -> list[str]:
    """The words of ``prompt`` that are not in ``vocabulary`` (lower-case words), each once, in the
    order they first appear."""
    seen: dict[str, None] = {}
    for word in words(prompt):
        if word not in vocabulary:
            seen.setdefault(word)
    return list(seen)


def read_vocabulary(path: str | Path) -> frozenset[str]:
    """A word list: one word a line, blank lines and ``#`` comments ignored, lower-cased."""
    out = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            out.add(line)
    return frozenset(out)


def vocabulary_path(model_path: str, options: dict[str, Any]) -> Path | None:
    """Where a model's word list is: its ``vocabulary`` option, relative to the model's folder."""
    name = options.get("vocabulary")
    if not name:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(model_path) / path


@lru_cache(maxsize=32)
def _model_vocabulary(models_file: str, mtime: float, aliases: tuple[str, ...],
                      model: str) -> tuple[str, frozenset[str]] | None:
    from darkroom.engines.registry import load_registry

    spec = load_registry(Path(models_file), aliases=aliases).get(model)
    path = vocabulary_path(spec.path, spec.options)
    if path is None:
        return None
    return spec.id, read_vocabulary(path)


def prompt_warnings(settings: Any, model: str, prompt: str) -> list[str]:
    """``["words MODEL does not know: ..."]`` when ``model`` (an id or alias of the registry that
    ``settings`` names) has a word list and ``prompt`` has words outside it; else ``[]``. Never
    raises: a missing or unreadable list is logged and gives no warning."""
    try:
        models_file = Path(settings.resolved_models_file())
        known = _model_vocabulary(str(models_file), models_file.stat().st_mtime, tuple(settings.aliases), model)
    except Exception:
        log.warning("could not read the vocabulary of model %s", model, exc_info=True)
        return []
    if known is None:
        return []
    model_id, vocabulary = known
    unknown = unknown_words(prompt, vocabulary)
    return [f"words {model_id} does not know: {', '.join(unknown)}"] if unknown else []
