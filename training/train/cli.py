"""The command line of ``python -m training.train``."""
from __future__ import annotations

import argparse

from training import build_pipeline as bp
from training import world
from training.train.loop import train_stage


def parse_edit_mix(text: str) -> dict[str, float]:
    """'add=2,move=1.5' -> world.EDIT_WEIGHTS with those kinds replaced (the --edit-mix argparse type:
    an ArgumentTypeError becomes a usage error naming the option)."""
    weights = dict(world.EDIT_WEIGHTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in weights:
            raise argparse.ArgumentTypeError(f"{part!r}: expected KIND=WEIGHT with KIND one of {world.EDIT_KINDS}")
        try:
            w = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight is not a number") from None
        if not w >= 0:
            raise argparse.ArgumentTypeError(f"{part!r}: a weight must be >= 0")
        weights[kind] = w
    if not any(weights.values()):
        raise argparse.ArgumentTypeError("at least one edit kind needs a weight above 0")
    return weights


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train one stage of darkroom-mini, from scratch or continuing a model (--init-from). The "
                    "shipped weights came from a chain of stages: python -m training.recipe replays it.")
    ap.add_argument("--out", default="models/darkroom-mini")
    ap.add_argument("--run", default=None, help="run dir (default training/runs/<name>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--hours", type=float, default=1.95, help="total wall-clock budget incl. VAE")
    ap.add_argument("--dec-minutes", type=float, default=28.0,
                    help="VAE decoder training budget (stage 2, after the transformer; inside --hours)")
    ap.add_argument("--dec-blur", type=float, default=0.0,
                    help="decoder stage: soften each training latent by a Gaussian of sigma up to this many pooled "
                         "pixels, so that the decoder draws soft sampled shapes crisply (0: off, runs 1-11; 1.0 "
                         "scored worse in an A/B on 2026-12-02, see train_decoder)")
    ap.add_argument("--decoder-only", action="store_true",
                    help="only train the VAE decoder (writes <run>/decoder.pt); can run in parallel")
    ap.add_argument("--init-from", default=None,
                    help="start from another run's ckpt.pt (transformer, EMA, aux head; the VAE unless "
                         "--decoder-from), or from a saved pipeline folder such as models/darkroom-mini "
                         "(see init_from_pipeline), with a fresh optimizer and schedule: training continued "
                         "across days or machines, or a recipe change on a trained model")
    ap.add_argument("--decoder-from", default=None,
                    help="use a decoder state dict trained separately (skips the decoder stage)")
    ap.add_argument("--batch", type=int, default=16, help="16 learnt faster per sample than 32 on 2 cores (A/B)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--heads", type=int, default=bp.TRANSFORMER_CFG["num_attention_heads"],
                    help="attention heads of 32 dims (width = 32 x heads)")
    ap.add_argument("--double", type=int, default=bp.TRANSFORMER_CFG["num_layers"], help="double-stream blocks")
    ap.add_argument("--single", type=int, default=bp.TRANSFORMER_CFG["num_single_layers"], help="single-stream blocks")
    ap.add_argument("--init", default="default", choices=["default", "adaln-zero"],
                    help="transformer initialisation (see build_pipeline.make_transformer)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="train this many steps (the lr schedule follows steps) instead of --hours")
    ap.add_argument("--edge-weight", type=float, default=4.0,
                    help="extra loss weight on shape edges and edited regions (see flow_loss)")
    ap.add_argument("--edit-weights", default="joint", choices=["joint", "separate"],
                    help="how an edit's change map joins the edge map in the detail weights: normalised together "
                         "(joint, runs 1-10) or each on its own (separate: a background change no longer drowns "
                         "the outlines; see detail_weights)")
    ap.add_argument("--aux-weight", type=float, default=0.3,
                    help="weight of the training-only semantic head's loss (see AuxHead; 0.3 from an A/B "
                         "and run 4); 0: no head")
    ap.add_argument("--aux-block", type=int, default=-1,
                    help="index into the double-stream blocks whose image output the head reads")
    ap.add_argument("--coupling", default="none", choices=["none", "noise"],
                    help="noise: each text-to-image sample's layout is read from its own noise "
                         "(world.coupled_place): straight flow paths, sharp targets at every noise level; "
                         "sampled with the deterministic sampler. Tried on 2026-12-01: not learnt in 30 "
                         "minutes (training/EXPERIMENTS.md)")
    ap.add_argument("--layout", default="canonical", choices=["canonical", "spread", "random"],
                    help="canonical: one layout per prompt (world.canonical_place), so the target is sharp "
                         "from pure noise; spread: canonical, but a list takes the arrangement with the widest "
                         "gaps (run 12, not adopted); random: drawn anywhere the prompt allows (runs 1-5)")
    ap.add_argument("--rich-p", type=float, default=0.0,
                    help="how often a training caption's word or frame comes from world.EXTRA_WORDS (more "
                         "synonyms and frames, none of the paraphrase set's), so unseen wordings land among seen "
                         "ones; 0 (runs 1-6, the best held-out score): the core two-ish words per concept. Run 7 "
                         "used 0.5 and run 8 0.2: paraphrases gained, held-out lost more (training/EXPERIMENTS.md)")
    ap.add_argument("--edit-frac", type=float, default=0.3)
    ap.add_argument("--edit-mix", type=parse_edit_mix, default=None, metavar="KIND=W,...",
                    help="how often each edit kind is drawn, e.g. 'add=2,move=1.5' (kinds not named keep "
                         f"world.EDIT_WEIGHTS: {world.EDIT_WEIGHTS})")
    ap.add_argument("--add-spot", default="first", choices=world.ADD_SPOTS,
                    help="where a canonical add without a position word goes (world.add_spot): first, the "
                         "first free of centre, left, right, top, bottom (runs up to 16); roomiest, the one "
                         "with the most room, a rule that nudging a source object flips less often; nearest, the free "
                         "point nearest the image centre, which moves with the objects instead of jumping")
    ap.add_argument("--edit-gradient", default="any", choices=world.GRADIENT_DIRS,
                    help="which way a canonical edit's new gradient background runs: any, horizontal or "
                         "vertical at random (runs up to 16), though no instruction says which; v, top to bottom")
    ap.add_argument("--blocked-spot", default="skip", choices=world.BLOCKED_SPOTS,
                    help="a canonical move or positioned add whose region centre is taken (world.position_spot): "
                         "skip, redraw the edit (runs up to 16; a third of real edits are like that); nearest, "
                         "the free point of the region nearest its centre")
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--pool", type=int, default=60000)
    ap.add_argument("--refresh-every", type=int, default=40, help="steps between pool refreshes")
    ap.add_argument("--refresh-n", type=int, default=256)
    ap.add_argument("--init-pool", type=int, default=2500)
    ap.add_argument("--async-data", action="store_true",
                    help="refresh the pool whenever the data workers have a refresh ready instead of "
                         "every --refresh-every steps (GPU runs: the device never waits on rendering; "
                         "the data order then depends on timing, so runs are not bit-reproducible)")
    ap.add_argument("--ckpt-min", type=float, default=10.0)
    ap.add_argument("--log-every", type=int, default=25, help="steps between progress lines")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="profile this many steps (after 50) with torch.profiler and log the top ops")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (TF32; see --bf16); the result is the same pipeline")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast on CUDA (off by default: on an H200 with torch 2.11+cu130 a bf16 "
                         "GEMM in the backward pass failed with CUBLAS_STATUS_EXECUTION_FAILED; TF32 works)")
    ap.add_argument("--data-workers", type=int, default=0,
                    help="processes rendering training data one refresh ahead (0: in this process)")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--train-shift", type=float, default=2.0, help="timestep shift for training noise levels")
    return ap


def main(argv=None):
    train_stage(parser().parse_args(argv))
