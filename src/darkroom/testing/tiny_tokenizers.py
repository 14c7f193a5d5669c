"""Tiny tokenizers of the real classes, built offline, for the tiny pipelines of ``tiny_families``.

Diffusers' own tests download tiny tokenizers from the hub; darkroom's tests cannot reach it.
Each builder here makes a tokenizer of the class the real model ships (``Qwen2Tokenizer``,
``CLIPTokenizer``, ``T5Tokenizer``, a byte-level BPE ``PreTrainedTokenizerFast`` for Mistral)
with a small vocabulary learnt in code from the pipelines' own prompt templates and common
prompt words. Byte-level BPE covers any text (unknown words fall back to bytes), and the
template words are single tokens as in the real vocabularies, so sequences stay short and the
pipelines' fixed template offsets (Qwen-Image drops the first 34 tokens) land where they
should. Vocabularies are a few hundred tokens, so the text encoders' embeddings stay tiny.

The BPE merges are learnt by a small deterministic trainer (ties broken by the pair's text),
so the same code always builds the same tokenizer.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import (
        CLIPTokenizer,
        PreTrainedTokenizerFast,
        Qwen2Tokenizer,
        T5Tokenizer,
    )

#: Text the vocabularies are learnt from: the pipelines' prompt templates and system messages
#: (so those are a few tokens each) and words common in image prompts.
CORPUS = """\
Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships
of the objects and background:
Describe the key features of the input image (color, shape, size, texture, objects, background), then
explain how the user's text instruction should alter or modify the image. Generate a new image that
meets the user's requirements while maintaining consistency with the original input where appropriate.
Picture 1: Picture 2: Picture 3: Picture 4:
You are an AI that reasons about image descriptions. You give structured responses focusing on object
relationships, object attribution and actions without speculation.
system user assistant
a an the of in on at with and or to from by for photo photograph painting drawing picture portrait
landscape cat dog bird horse fox squirrel monkey burger apple flower tree forest mountain river lake sea
ocean sky cloud sun moon star city street house car boat robot astronaut woman man child face hat sign
red orange yellow green blue purple pink black white gray brown gold silver bright dark light
small large tiny big old new happy sad beautiful sitting standing eating dancing flying running
wearing holding made glass wood stone metal water fire snow rain night day sunset sunrise morning
detailed realistic cinematic style art oil watercolor sketch close up view background foreground
high quality bad quality blurry ugly deformed low resolution make it turn into change keep same add remove
replace table chair room window door
"""

_QWEN_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
#: Added but not special, as in Qwen3 (the chat template writes them when thinking is off).
_QWEN_ADDED = ("<think>", "</think>")

#: Qwen3's chat template, cut to what the pipelines use: user/system turns, the generation
#: prompt and the empty thinking block written when ``enable_thinking=False``.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

_MISTRAL_SPECIAL = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
)

#: Mistral Small 3.1's chat template, cut to system and user turns with text and images.
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' }}{%- endif %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}"
    "{%- elif part['type'] == 'image' %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[/INST]' }}"
    "{%- else %}{{- eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def train_bpe(words: Counter[tuple[str, ...]], *, min_count: int = 1) -> list[tuple[str, str]]:
    """Learn BPE merges from words given as symbol tuples with their counts.

    The most frequent adjacent pair is merged first, ties broken by the pair's text, until no
    pair occurs ``min_count`` times: a deterministic result, the same on every run.
    """
    symbols = [list(word) for word in words]
    counts = [words[word] for word in words]
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for index, word in enumerate(symbols):
        for pair in itertools.pairwise(word):
            pairs[pair] += counts[index]
            where.setdefault(pair, set()).add(index)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        negative, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -negative:
            continue  # a stale entry: the count changed after it was pushed
        if -negative < min_count:
            break
        merges.append(pair)
        merged = pair[0] + pair[1]
        touched: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair, ())):
            word, count = symbols[index], counts[index]
            for old in itertools.pairwise(word):
                pairs[old] -= count
                touched.add(old)
            new_word, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    new_word.append(merged)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            symbols[index] = new_word
            for new in itertools.pairwise(new_word):
                pairs[new] += count
                touched.add(new)
                where.setdefault(new, set()).add(index)
        pairs.pop(pair, None)
        for changed in touched:
            if pairs.get(changed, 0) > 0:
                heapq.heappush(heap, (-pairs[changed], changed))
    return merges


def _pieces(tokenizer, text: str) -> list[str]:
    """The pre-tokenized pieces of ``text``, exactly as ``tokenizer``'s backend splits them."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def _corpus_pieces(tokenizer) -> list[str]:
    """The corpus as ``tokenizer`` splits it, each word also alone and after a space: a word
    starts a text or follows a space or a special token, and each way is one piece."""
    pieces = _pieces(tokenizer, CORPUS)
    for word in CORPUS.split():
        pieces += _pieces(tokenizer, word) + _pieces(tokenizer, " " + word)
    return pieces


def _byte_alphabet() -> list[str]:
    """The 256 symbols of byte-level BPE, in byte order (GPT-2's byte-to-unicode table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[byte] for byte in range(256)]


def _byte_level_vocab(pieces: Iterable[str], suffix: str = "") -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges learnt from pre-tokenized pieces.

    With ``suffix`` (CLIP's ``</w>``) the last symbol of each word carries it, as BPE models
    with an end-of-word suffix expect.
    """
    words: Counter[tuple[str, ...]] = Counter()
    for piece in pieces:
        symbols = list(piece)
        if suffix:
            symbols[-1] += suffix
        words[tuple(symbols)] += 1
    merges = train_bpe(words)
    alphabet = _byte_alphabet()
    tokens = alphabet + [symbol + suffix for symbol in alphabet] if suffix else list(alphabet)
    tokens += [left + right for left, right in merges]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


@lru_cache(maxsize=1)
def _qwen_vocab() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    from transformers import Qwen2Tokenizer

    splitter = Qwen2Tokenizer()
    vocab, merges = _byte_level_vocab(_corpus_pieces(splitter))
    return tuple(vocab.items()), tuple(merges)


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` (Qwen2.5-VL, Qwen3) with Qwen's special tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    items, merges = _qwen_vocab()
    vocab = dict(items)
    for token in (*_QWEN_SPECIAL, *_QWEN_ADDED):
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges),
        extra_special_tokens=list(_QWEN_SPECIAL[1:]),
        model_max_length=32768,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in _QWEN_ADDED])
    return tokenizer


def _byte_level_backend(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """A ``tokenizers`` byte-level BPE with Qwen's split pattern (tekken's is of the same kind)."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Mistral Small 3.1's special tokens
    (``<s>``, ``[INST]``, ``[IMG]`` ...) at the front of the vocabulary, as in tekken."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    items, merges = _qwen_vocab()
    vocab = {token: index for index, token in enumerate(_MISTRAL_SPECIAL)}
    for token, _ in items:
        vocab.setdefault(token, len(vocab))
    backend = _byte_level_backend(vocab, list(merges))
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in _MISTRAL_SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=131072,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )


def clip_tokenizer() -> CLIPTokenizer:
    """A ``CLIPTokenizer`` (lower-cased byte-level BPE with ``</w>`` word ends), 77 tokens long."""
    from transformers import CLIPTokenizer

    splitter = CLIPTokenizer()
    vocab, merges = _byte_level_vocab(_corpus_pieces(splitter), suffix="</w>")
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer() -> T5Tokenizer:
    """A ``T5Tokenizer`` (Unigram over ``▁``-marked words): the corpus's words whole, any other
    ASCII text spelt out letter by letter, other characters ``<unk>`` (as in T5)."""
    import re

    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    # Whole words score above any spelling of them in letters, so the Unigram model keeps them.
    words = sorted(set(re.findall(r"[A-Za-z]+", CORPUS)))
    pieces += [(prefix + word, -5.0) for word in words for prefix in ("▁", "")]
    pieces += [(chr(code), -10.0) for code in range(ord("!"), ord("~") + 1)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
