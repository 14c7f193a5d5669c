"""How much of a paraphrase can the frozen text encoder tell the model? A ceiling for issue #3's target.

    python -m training.encoder_probe [--captions 2000] [--json out.json] [--encoder DIR]

darkroom-mini reads prompts through frozen all-MiniLM-L6-v2 token states. Paraphrase prompts use
words that no training caption contains ("scarlet", "cobalt", "orb", ...), so the model can only
draw them right where the encoder puts them near the training words of the same concept. This
measures that directly, with no diffusion model involved: a probe (linear, and a one-hidden-layer
MLP) learns each word's concept (which colour, shape, size, background) from the encoder's states
at the word's tokens in training captions, every training word (core and extra synonyms) included,
and is then asked to name the concept of the paraphrase words in paraphrase captions. The probes
see nothing the diffusion transformer does not, and learn from the same words, so their accuracy
is a fair estimate of how well any model trained on our captions can read the unseen words.

It also estimates a ceiling for the paraphrase score: for each prompt of the evaluator's paraphrase
set, the product of the probe's per-word accuracy over the concept words the prompt names (colour,
shape, size, background), averaged over the set. (Positions, relations, counts and frames are left
out, so the true ceiling is lower still.)

``--encoder DIR`` asks the same of another encoder (any Hugging Face model folder with a fast
tokenizer), to learn whether changing darkroom-mini's encoder could lift the ceiling before paying
for a retraining.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from training import build_pipeline as bp
from training import world

# The concept tables probed: their words name a value the evaluator checks, and none of their
# phrases is a frame or a count word ("a", "one"), which would make the matching ambiguous.
TABLES = ("colour", "shape", "size", "bg")


@dataclass(frozen=True)
class Phrase:
    table: str
    key: str
    text: str
    split: str  # "train" (core and extra training words) or "para"


def lexicon() -> list[Phrase]:
    """Every phrase of the probed tables, longest first (so "grassy green" wins over "green")."""
    out = []
    for name in TABLES:
        for key, words in world.WORD_TABLES[name].items():
            for w in words["train"] + world.EXTRA_WORDS[name][key]:
                out.append(Phrase(name, str(key), w, "train"))
            for w in words["para"]:
                out.append(Phrase(name, str(key), w, "para"))
    return sorted(out, key=lambda p: -len(p.text))


def find_phrases(text: str, lex: list[Phrase]) -> list[tuple[int, int, Phrase]]:
    """(start, end, phrase) of each lexicon phrase in ``text``, whole words, non-overlapping, longest first.
    Plurals ("stars", "boxes") match their phrase."""
    taken: list[tuple[int, int, Phrase]] = []
    for p in lex:
        plural = world.SHAPE_PLURAL.get(p.text, p.text + "s")
        for m in re.finditer(rf"\b(?:{re.escape(plural)}|{re.escape(p.text)})\b", text):
            if all(m.end() <= a or m.start() >= b for a, b, _ in taken):
                taken.append((m.start(), m.end(), p))
    return sorted(taken, key=lambda t: t[0])


@contextmanager
def _every_training_word():
    """'rich' captions with half core, half extra words, so every training word of every concept appears."""
    saved = world.RICH_P
    world.RICH_P = 0.5
    try:
        yield
    finally:
        world.RICH_P = saved


def captions(mode: str, n: int, seed: int) -> list[str]:
    """``n`` captions of random specs in ``mode`` ('rich' with every slot free to take an extra word,
    or 'para')."""
    rng = random.Random(seed)
    with _every_training_word():
        return [world.caption(world.sample_spec(rng), world._rand_bg(rng), mode, rng, with_bg=rng.random() < 0.6)
                for _ in range(n)]


@torch.no_grad()
def word_states(texts: list[str], lex: list[Phrase], enc, tok, batch: int = 64):
    """For every concept phrase in every text: (phrase, mean encoder state over its tokens, text index)."""
    out = []
    for b in range(0, len(texts), batch):
        chunk = texts[b:b + batch]
        t = tok(chunk, return_tensors="pt", padding="max_length", truncation=True, max_length=bp.MAX_SEQ,
                return_offsets_mapping=True)
        offsets = t.pop("offset_mapping")
        h = enc(**t).last_hidden_state
        for i, text in enumerate(chunk):
            for start, end, p in find_phrases(text, lex):
                toks = [k for k, (a, e) in enumerate(offsets[i].tolist()) if e > a and a >= start and e <= end]
                if toks:  # a phrase cut off by the 32-token limit is not seen by the model either
                    out.append((p, h[i, toks].mean(0), b + i))
    return out


def _fit(x: torch.Tensor, y: torch.Tensor, k: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Linear(x.shape[1], k) if not hidden else torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, k))
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-2)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def sentence_probe(enc, tok, n_train: int = 1500, n_para: int = 300, seed: int = 0) -> dict:
    """The same question at sentence level, for single-object prompts: can a linear probe name the object's
    colour and shape from MiniLM's mean-pooled sentence embedding (what all-MiniLM-L6-v2 was trained to make
    paraphrase-invariant) or from the pooler output (the pipeline's pooled vector)?"""
    rng = random.Random(seed)

    def make(mode: str, n: int):
        caps, labels = [], []
        for _ in range(n):
            spec = world.sample_spec(rng, "single")
            caps.append(world.caption(spec, world._rand_bg(rng), mode, rng, with_bg=rng.random() < 0.5))
            g = spec["groups"][0]
            labels.append((list(world.COLOURS).index(g["colour"]), world.SHAPES.index(g["shape"])))
        return caps, torch.tensor(labels)

    @torch.no_grad()
    def embed(caps: list[str]):
        t = tok(caps, return_tensors="pt", padding=True)
        out = enc(**t)
        m = t.attention_mask[..., None].float()
        return {"mean_pooled": (out.last_hidden_state * m).sum(1) / m.sum(1), "pooler": out.pooler_output}

    with _every_training_word():
        (tr_caps, tr_y), (te_caps, te_y) = make("rich", n_train), make("para", n_para)
    tr_e, te_e = embed(tr_caps), embed(te_caps)
    res = {}
    for kind in tr_e:
        x, xt = tr_e[kind], te_e[kind]
        mu, sd = x.mean(0), x.std(0) + 1e-4
        for j, what in enumerate(("colour", "shape")):
            net = _fit((x - mu) / sd, tr_y[:, j], 8 if what == "colour" else 6, 0, seed)
            res[f"{kind}_{what}"] = round((net((xt - mu) / sd).argmax(1) == te_y[:, j]).float().mean().item(), 3)
    return res


def load_encoder(path: str | None):
    """(encoder, tokenizer): darkroom-mini's frozen MiniLM, or the model folder at ``path``."""
    if path is None:
        return bp.load_text_encoder(), bp.make_tokenizer()
    from transformers import AutoModel, AutoTokenizer

    enc = AutoModel.from_pretrained(path, dtype=torch.float32)
    enc.eval()
    enc.requires_grad_(False)
    # Same 32-token limit as the pipeline, so a phrase the model cannot see is not probed either.
    return enc, AutoTokenizer.from_pretrained(path, model_max_length=bp.MAX_SEQ)


def run(n_captions: int = 2000, seed: int = 0, log=print, encoder: str | None = None) -> dict:
    enc, tok = load_encoder(encoder)
    lex = lexicon()
    train = [s for s in word_states(captions("rich", n_captions, seed), lex, enc, tok) if s[0].split == "train"]
    para_caps = [c for c, _, _ in world.eval_sets(n_per_cat=12, n_edits_per_kind=1)["paraphrase"]]
    para = word_states(para_caps, lex, enc, tok)
    leaks = [s[0].text for s in para if s[0].split != "para"]
    res: dict = {"encoder": encoder or "all-MiniLM-L6-v2 (darkroom-mini's)", "n_train_words": len(train),
                 "n_para_words": len(para), "para_words_from_training": sorted(set(leaks)), "tables": {}}
    acc_of: dict[tuple[str, str], float] = {}  # (table, para phrase) -> best probe's accuracy
    for name in TABLES:
        keys = sorted({p.key for p in lex if p.table == name})
        tr = [s for s in train if s[0].table == name]
        te = [s for s in para if s[0].table == name]
        x, y = torch.stack([s[1] for s in tr]), torch.tensor([keys.index(s[0].key) for s in tr])
        xt, yt = torch.stack([s[1] for s in te]), torch.tensor([keys.index(s[0].key) for s in te])
        mu, sd = x.mean(0), x.std(0) + 1e-4
        row = {}
        best_hits = None
        for probe, hidden in (("linear", 0), ("mlp", 256)):
            net = _fit((x - mu) / sd, y, len(keys), hidden, seed)
            hits = net((xt - mu) / sd).argmax(1) == yt
            row[probe] = round(hits.float().mean().item(), 3)
            row[probe + "_train"] = round((net((x - mu) / sd).argmax(1) == y).float().mean().item(), 3)
            if best_hits is None or hits.float().mean() > best_hits.float().mean():
                best_hits = hits
        per_word: dict[str, list[bool]] = {}
        for s, h in zip(te, best_hits.tolist()):
            per_word.setdefault(s[0].text, []).append(h)
        row["per_word"] = {w: round(sum(v) / len(v), 2) for w, v in sorted(per_word.items())}
        acc_of.update({(name, w): sum(v) / len(v) for w, v in per_word.items()})
        res["tables"][name] = row
        log(f"{name}: linear {row['linear']} mlp {row['mlp']} (train {row['linear_train']}/{row['mlp_train']}); "
            f"{row['per_word']}")
    ceil = []
    for i in range(len(para_caps)):
        c = 1.0
        for s in (s for s in para if s[2] == i):
            c *= acc_of.get((s[0].table, s[0].text), 1.0)
        ceil.append(c)
    res["paraphrase_ceiling_estimate"] = round(sum(ceil) / len(ceil), 3)
    res["sentence_level"] = sentence_probe(enc, tok, seed=seed)
    log(f"sentence level, single-object paraphrase prompts: {res['sentence_level']}")
    log(f"estimated paraphrase ceiling (product of per-word probe accuracy, concept words only): "
        f"{res['paraphrase_ceiling_estimate']}")
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=2000, help="training captions the probes learn from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--encoder", default=None, metavar="DIR",
                    help="probe this Hugging Face model folder instead of darkroom-mini's MiniLM")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args.captions, args.seed, encoder=args.encoder)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
