"""Precision and recall of the text moderation on the labelled prompt set.

    python bench/bench_moderation.py                    # report on tune, holdout and all
    python bench/bench_moderation.py --errors tune      # list the tune split's mistakes
    python bench/bench_moderation.py --json out.json

The set (bench/data/moderation_prompts.tsv) gives the expected verdict of every prompt at
safety_tolerance 0, 2 and 6. Its split column: ``tune`` and ``holdout`` were fixed by a hash
of the prompt before any tuning, and the lexicon, the exemplars and the thresholds were
tuned looking only at the ``tune`` split's mistakes. The same person wrote the prompts and
the lexicon, though, so ``fresh`` prompts were written after v1.0.0 was frozen (then used to
make v1.1.0), and ``fresh2`` after v1.1.0 was frozen, run once, untuned: the most honest
estimate, if a small one. "Positive" means "should be blocked".
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from darkroom.safety import Moderator
from darkroom.safety.policy import decide

DATA = Path(__file__).parent / "data" / "moderation_prompts.tsv"
LEVELS = (0, 2, 6)


def load_prompts(path: Path = DATA) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def rates(rows: list[dict], level: int) -> dict[str, float]:
    tp = sum(1 for r in rows if r[f"level{level}"] == "block" and r["got"][level] == "block")
    fp = sum(1 for r in rows if r[f"level{level}"] == "allow" and r["got"][level] == "block")
    fn = sum(1 for r in rows if r[f"level{level}"] == "block" and r["got"][level] == "allow")
    negatives = sum(1 for r in rows if r[f"level{level}"] == "allow")
    return {
        "n": len(rows),
        "positives": tp + fn,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "false_block_rate": fp / negatives if negatives else 0.0,
        "fp": fp,
        "fn": fn,
    }


def benign_false_blocks(rows: list[dict], level: int) -> tuple[int, int]:
    benign = [r for r in rows if r["class"] == "benign"]
    return sum(1 for r in benign if r["got"][level] == "block"), len(benign)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--errors", choices=["tune", "holdout", "fresh", "fresh2", "all"], help="list mistakes of this split")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    rows = load_prompts()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    moderator = Moderator(image_detector="fallback")
    started = time.perf_counter()
    moderator.warm_up()
    warm_s = time.perf_counter() - started
    latencies = []
    for row in rows:
        t0 = time.perf_counter()
        scores, evidence = moderator.text_scores(row["prompt"])
        latencies.append(time.perf_counter() - t0)
        verdicts = {lv: decide(scores, lv, evidence=evidence) for lv in LEVELS}
        row["got"] = {lv: "allow" if v.allowed else "block" for lv, v in verdicts.items()}
        row["scores"] = scores
        row["why"] = verdicts[0].reasons

    report: dict = {"prompts": len(rows), "warm_up_s": round(warm_s, 2), "levels": {}}
    print(f"{len(rows)} prompts; warm-up {warm_s:.1f} s; text check p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, p95 "
          f"{sorted(latencies)[int(0.95 * len(latencies))] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms\n")
    print("| split | level | n | should block | precision | recall | false-block rate | FP | FN |")
    print("|---|---|---|---|---|---|---|---|---|")
    for split in ("tune", "holdout", "fresh", "fresh2", "all"):
        subset = rows if split == "all" else [r for r in rows if r["split"] == split]
        for level in LEVELS:
            m = rates(subset, level)
            report["levels"].setdefault(split, {})[level] = m
            print(f"| {split} | {level} | {m['n']} | {m['positives']} | {m['precision']:.3f} | {m['recall']:.3f} "
                  f"| {m['false_block_rate']:.3f} | {m['fp']} | {m['fn']} |")
    print()
    for split in ("tune", "holdout", "fresh", "fresh2", "all"):
        subset = rows if split == "all" else [r for r in rows if r["split"] == split]
        blocked, total = benign_false_blocks(subset, 2)
        print(f"level 2, {split}: benign prompts blocked {blocked}/{total} = {blocked / total:.3f}")
        report.setdefault("benign_false_blocks_level2", {})[split] = {"blocked": blocked, "benign": total}
    report["latency_ms"] = {"p50": statistics.median(latencies) * 1000, "max": max(latencies) * 1000}

    if args.errors:
        print(f"\nmistakes ({args.errors}):")
        for row in rows:
            if args.errors != "all" and row["split"] != args.errors:
                continue
            wrong = [lv for lv in LEVELS if row["got"][lv] != row[f"level{lv}"]]
            if wrong:
                nonzero = {k: v for k, v in row["scores"].items() if v}
                print(f"  {row['id']} {row['class']:8} levels {wrong} expected "
                      f"{[row[f'level{lv}'] for lv in wrong]} {row['prompt']!r} {nonzero} {row['why'][:2]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
