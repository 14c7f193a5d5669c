"""Export a training checkpoint (EMA or raw transformer) + a decoder state dict to a pipeline folder.

    python -m training.export --ckpt training/runs/mini-s0/ckpt.pt \
        --decoder training/runs/dec-s0/decoder.pt --out models/darkroom-mini [--raw]
"""
from __future__ import annotations

import argparse

import torch

from training import build_pipeline as bp


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--decoder", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", action="store_true", help="export the raw (non-EMA) transformer weights")
    args = ap.parse_args(argv)
    st = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    tr = bp.make_transformer()
    tr.load_state_dict(st["transformer"] if args.raw else st["ema"])
    vae = bp.make_vae()
    vae.load_state_dict(st["vae"])
    vae.register_to_config(shift_factor=st["vae_shift"], scaling_factor=st["vae_scale"])
    if args.decoder:
        vae.load_state_dict(torch.load(args.decoder, map_location="cpu"))
    bp.save_pipeline(tr, vae, args.out, {"train_step": st["step"], "train_minutes": round(st["elapsed"] / 60, 1),
                                         "weights": "raw" if args.raw else "ema"})
    print("exported", args.out, "step", st["step"])


if __name__ == "__main__":
    main()
