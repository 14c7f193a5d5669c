"""The curated, versioned term lexicon (``data/lexicon.toml``) and its matcher.

Text is normalised (NFKC, case-folded, accents stripped), then matched twice: as is,
and with leetspeak, s.p.a.c.e.d letters and stretched letters undone. Safe phrases
("shoot a portrait", "bloody mary") are cut out first, so their words never count.
Combos then raise a category when groups of words co-occur (a minor with anything
sexual, a protected group with a call to violence).
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from darkroom.safety.policy import CATEGORIES, empty_scores

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s", "!": "i"})
_LEET_TOKEN = re.compile(r"[a-z0-9@$!]*[a-z][a-z0-9@$!]*")
_SPACED = re.compile(r"\b(?:[a-z][.\-_*·] ?){2,}[a-z]\b")
_STRETCHED = re.compile(r"([a-z])\1{2,}")
# Replaces a cut-out safe phrase: a word no term contains, so no term spans the cut.
_CUT = " qqcutqq "
_AGE = re.compile(r"\b(?:[1-9]|1[0-7])\s*-?\s*(?:years?|yrs?|y\.?o\.?)\b(?:\s*-?\s*old)?")


def normalise(text: str) -> str:
    """NFKC, case-folded, accents stripped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(text.split())


def deobfuscate(text: str) -> str:
    """Undo common evasions in normalised text: ``p0rn``, ``n.u.d.e``, ``sexxxy``."""
    text = _SPACED.sub(lambda m: re.sub(r"[^a-z]", "", m.group(0)), text)

    def unleet(m: re.Match[str]) -> str:
        token = m.group(0)
        return token.translate(_LEET) if any(not c.isalpha() for c in token) else token

    text = _LEET_TOKEN.sub(unleet, text)
    return _STRETCHED.sub(r"\1", text)


def term_pattern(term: str) -> str:
    """Regex source for one lexicon term (see the syntax in ``lexicon.toml``)."""
    words = []
    for word in term.split():
        if word == "*":
            words.append(r"\w+")
            continue
        parts = []
        for part in filter(None, word.split("-")):
            prefix = part.endswith("*")
            part = re.escape(part.rstrip("*"))
            parts.append(part + (r"\w*" if prefix else ""))
        words.append(r"[\W_]?".join(parts))
    # Plurals: "es" only after s/x/z/ch/sh, so "spic" never matches "spices".
    plural = r"(?:es)?" if re.search(r"(?:s|x|z|ch|sh)$", term) else r"s?"
    return r"(?<!\w)" + r"[\W_]+".join(words) + plural + r"(?!\w)"


def compile_terms(terms: list[str]) -> re.Pattern[str]:
    # Longest first, so the alternation reports the most specific term.
    ordered = sorted(set(terms), key=len, reverse=True)
    return re.compile("|".join(f"(?:{term_pattern(t)})" for t in ordered))


@dataclass(frozen=True)
class _Group:
    category: str
    grade: float
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class _Combo:
    name: str
    category: str
    grade: float
    requires: dict[str, float]
    all_of: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class LexiconMatch:
    """What the lexicon found in one text."""

    scores: dict[str, float]
    evidence: dict[str, str]  # category -> the term or combo behind its grade
    minors: bool  # a word marking a minor occurs (used with the semantic scores too)


@dataclass
class Lexicon:
    """A parsed lexicon. Build with :meth:`load`."""

    version: str
    safe: re.Pattern[str]
    groups: list[_Group]
    combos: list[_Combo]
    minors: re.Pattern[str]
    named: dict[str, re.Pattern[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        """Parse ``path`` (default: the packaged ``data/lexicon.toml``); raises ValueError if malformed."""
        if path is None:
            data = tomllib.loads(resources.files("darkroom.safety").joinpath("data/lexicon.toml").read_text())
        else:
            data = tomllib.loads(Path(path).read_text())
        return cls.parse(data)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Lexicon:
        named = {
            "minors": compile_terms(data["minors"]["words"]),
            "groups": compile_terms(data.get("groups", {}).get("words", ["qqnothingqq"])),
        }
        groups = []
        for entry in data["terms"]:
            if entry["category"] not in CATEGORIES:
                raise ValueError(f"lexicon: unknown category {entry['category']!r}")
            groups.append(_Group(entry["category"], float(entry["grade"]), compile_terms(entry["words"])))
        groups.sort(key=lambda g: g.grade, reverse=True)
        combos = []
        for entry in data.get("combos", []):
            if entry["category"] not in CATEGORIES:
                raise ValueError(f"lexicon: unknown category {entry['category']!r}")
            patterns = []
            for words in entry["all_of"]:
                if isinstance(words, str):
                    patterns.append(named[words.removeprefix("@")])
                else:
                    patterns.append(compile_terms(words))
            combos.append(
                _Combo(entry["name"], entry["category"], float(entry["grade"]),
                       {k: float(v) for k, v in entry.get("requires", {}).items()}, tuple(patterns))
            )
        return cls(
            version=str(data["version"]),
            safe=compile_terms(data["safe"]["phrases"]),
            groups=groups,
            combos=combos,
            minors=named["minors"],
            named=named,
        )

    def match(self, text: str) -> LexiconMatch:
        """Grade ``text`` per category."""
        base = normalise(text)
        variants = [self.safe.sub(_CUT, base)]
        tricky = deobfuscate(base)
        if tricky != base:
            variants.append(self.safe.sub(_CUT, tricky))
        scores = empty_scores()
        evidence: dict[str, str] = {}
        for group in self.groups:  # highest grade first: the first hit per category wins
            if scores[group.category] >= group.grade:
                continue
            for variant in variants:
                hit = group.pattern.search(variant)
                if hit:
                    scores[group.category] = group.grade
                    evidence[group.category] = f"lexicon {self.version}: {hit.group(0)!r}"
                    break
        minors = any(self.minors.search(v) for v in variants) or bool(_AGE.search(base))
        for combo in self.combos:
            if scores[combo.category] >= combo.grade:
                continue
            if any(scores[c] < g for c, g in combo.requires.items()):
                continue
            if all(self._has(p, variants, base) for p in combo.all_of):
                scores[combo.category] = combo.grade
                evidence[combo.category] = f"lexicon {self.version}: {combo.name}"
        return LexiconMatch(scores=scores, evidence=evidence, minors=minors)

    def _has(self, pattern: re.Pattern[str], variants: list[str], base: str) -> bool:
        if pattern is self.minors and _AGE.search(base):
            return True
        return any(pattern.search(v) for v in variants)
