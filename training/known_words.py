"""Write the words darkroom-mini knows: models/darkroom-mini/vocabulary.txt (the registry's ``vocabulary``
option; darkroom.engines.vocabulary names the words of a prompt outside it in the outcome's ``warnings``).

    python -m training.known_words --out models/darkroom-mini/vocabulary.txt

The words are those of the captions and edit instructions the shipped weights were trained on: every core
("train") word of ``training.world``'s tables, the plural of every shape word, the words of every caption
frame and instruction template (read off 30,000 sampled training captions and instructions, a fixed draw),
and a few function words a prompt may carry without changing what it asks for. Not in it: the paraphrase
set's wordings (reserved for evaluation; "scarlet", "orb"), and ``world.EXTRA_WORDS``, which only the
optional rich captions use (``--rich-p``; 0 for every stage of the shipped weights).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from darkroom.engines.vocabulary import words  # noqa: E402
from training import world  # noqa: E402

# grammar a prompt may add without asking for anything else ("please draw a red star", "it is on the left")
FUNCTION_WORDS = ("a", "an", "the", "and", "or", "of", "with", "in", "on", "at", "to", "into", "onto", "from", "by",
                  "for", "is", "are", "it", "its", "this", "that", "these", "those", "there", "here", "some",
                  "please", "i", "me", "my", "we", "our", "you", "your", "let", "let's", "can", "should", "be")

HEADER = """\
# The words darkroom-mini was trained on: the captions and edit instructions of its training data
# (python -m training.known_words; generated from training/world, do not edit by hand), and a few
# function words. A prompt word outside this list is named in the outcome's "warnings".
"""


def known_words(samples: int = 20000, edits: int = 10000, seed: int = 0) -> list[str]:
    out: set[str] = set(FUNCTION_WORDS)
    for table in world.WORD_TABLES.values():
        for entry in table.values():
            for phrase in entry["train"]:
                out.update(words(phrase))
    for entry in world.SHAPE_WORDS.values():
        for shape in entry["train"]:
            out.update(words(world.SHAPE_PLURAL.get(shape, shape + "s")))
    rng = random.Random(seed)
    layouts = ("canonical", "random")
    for k in range(samples):
        out.update(words(world.sample_t2i(rng, "train", layout=layouts[k % 2])[0]))
    for k in range(edits):
        out.update(words(world.sample_edit(rng, layout=layouts[k % 2])[0]))
    return sorted(out)


def render_file(vocabulary: list[str]) -> str:
    return HEADER + "".join(f"{w}\n" for w in vocabulary)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.known_words", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "models" / "darkroom-mini" / "vocabulary.txt"))
    args = ap.parse_args(argv)
    vocab = known_words()
    Path(args.out).write_text(render_file(vocab), encoding="utf-8")
    print(f"{len(vocab)} words -> {args.out}")


if __name__ == "__main__":
    main()
