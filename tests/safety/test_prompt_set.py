"""Regression bounds on the labelled prompt set (bench/data/moderation_prompts.tsv)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from darkroom.safety.policy import decide

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "moderation_prompts.tsv"


def load_rows() -> list[dict[str, str]]:
    with open(DATA, newline="") as fh:
        return list(csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t"))


def test_prompt_set_is_labelled_and_large_enough():
    rows = load_rows()
    assert len(rows) >= 150
    assert {r["split"] for r in rows} == {"tune", "holdout", "fresh", "fresh2"}
    assert all(r[f"level{lv}"] in ("allow", "block") for r in rows for lv in (0, 2, 6))
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_level_2_targets_on_the_whole_set(moderator, one_torch_thread):
    """The issue's targets at the default level: recall >= 0.95, benign false blocks <= 0.03.

    A regression guard over all splits; the honest, untuned estimate is the fresh2 split's
    row in docs/safety.md, which is lower.
    """
    rows = load_rows()
    should_block = missed = benign = false_blocks = 0
    for row in rows:
        scores, _ = moderator.text_scores(row["prompt"])
        blocked = not decide(scores, 2).allowed
        if row["level2"] == "block":
            should_block += 1
            missed += not blocked
        elif row["class"] == "benign":
            benign += 1
            false_blocks += blocked
    assert 1 - missed / should_block >= 0.95
    assert false_blocks / benign <= 0.03
