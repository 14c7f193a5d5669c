"""Tiny random-weight pipelines of each model family darkroom serves, built in code (no hub).

``build_tiny(family, folder)`` builds the family's diffusers pipeline at toy sizes (hidden sizes
8-48, one or two transformer blocks, 8x VAEs of 8-16 channels, vocabularies of a few hundred
tokens from ``tiny_tokenizers``), seeds every component's weights, and saves it with
``save_pretrained`` so that the family's pipeline class loads it with ``from_pretrained``,
offline. Shapes follow the real models wherever the pipeline relies on them (latent packing,
rope axes summing to the head size, the text-encoder layers a pipeline reads, vision token
ids), so the real diffusers code paths run, each in well under a second at 64x64 on a CPU.

Family names are the registry's ``pipeline =`` values:

    path = build_tiny("qwen-image-edit", tmp_path / "tiny-qwen-edit")
    pipe = QwenImageEditPlusPipeline.from_pretrained(path)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from darkroom.testing.tiny_pipeline import build_tiny_flux


def _seeded(seed: int, make: Callable[[], Any]) -> Any:
    """``make()`` under a fixed torch seed, in eval mode (no dropout), so weights are repeatable."""
    import torch

    torch.manual_seed(seed)
    model = make()
    return model.eval() if hasattr(model, "eval") else model


def _flux2_vae(seed: int):
    from diffusers import AutoencoderKLFlux2

    return _seeded(seed, lambda: AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),  # four blocks: 8x, as FLUX.2's VAE
        layers_per_block=1,
        latent_channels=4,  # 2x2-patchified to 16 channels for the transformer
        norm_num_groups=4,
        sample_size=64,
    ))


def _flux2_transformer(seed: int, text_dim: int, *, guidance_embeds: bool):
    from diffusers import Flux2Transformer2DModel

    return _seeded(seed, lambda: Flux2Transformer2DModel(
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        axes_dims_rope=(4, 4, 4, 4),  # four axes (t, h, w, l) summing to the head size
        guidance_embeds=guidance_embeds,
    ))


def _flow_scheduler(**config: Any):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


#: FLUX.1 and FLUX.2 scheduler settings: the shift grows with the image's token count.
_FLUX_SHIFTING = dict(
    base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15, use_dynamic_shifting=True
)

#: FLUX.2 [dev] stacks the Mistral hidden states of layers 10, 20 and 30 (FLUX.2 [klein]: 9, 18
#: and 27 of Qwen3); the tiny encoders are that deep so the pipelines' defaults work unchanged.
MISTRAL_LAYERS = 30
KLEIN_LAYERS = 27
TEXT_DIM = 16


def _flux2(seed: int):
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from darkroom.testing.tiny_tokenizers import mistral_tokenizer

    tokenizer = mistral_tokenizer()
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_DIM,
            "intermediate_size": 32,
            "max_position_embeddings": 2048,
            "num_attention_heads": 2,
            "num_hidden_layers": MISTRAL_LAYERS,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": TEXT_DIM,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 8,
            "intermediate_size": 32,
            "image_size": 64,
            "patch_size": 8,
            "num_channels": 3,
        },
        spatial_merge_size=2,
        vision_feature_layer=-1,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
    )
    text_encoder = _seeded(seed + 1, lambda: Mistral3ForConditionalGeneration(config))
    # The tokenizer, not a PixtralProcessor: transformers 5 builds that processor only with
    # torchvision, and the pipeline's text path uses nothing but its chat template.
    return Flux2Pipeline(
        scheduler=_flow_scheduler(**_FLUX_SHIFTING),
        vae=_flux2_vae(seed + 2),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=_flux2_transformer(seed + 3, 3 * TEXT_DIM, guidance_embeds=True),
    )


_BUILDERS: dict[str, Callable[[int], Any]] = {
    "flux2": _flux2,
}

#: The families ``build_tiny`` knows, by registry ``pipeline =`` value.
FAMILIES = ("flux", "flux-kontext", *_BUILDERS)


def build_tiny(family: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny random-weight pipeline of ``family`` and save it to ``folder``.

    Args:
        family: a registry ``pipeline =`` value, one of ``FAMILIES``.
        folder: the folder to write (created; existing files are overwritten).
        seed: seeds every component's weights; the same seed builds the same weights.

    Returns:
        The folder, ready for the family's pipeline class ``from_pretrained`` (offline).

    Raises:
        ValueError: ``family`` is not one of ``FAMILIES``.
    """
    folder = Path(folder)
    if family in ("flux", "flux-kontext"):
        return build_tiny_flux(folder, kontext=family == "flux-kontext", seed=seed)
    if family not in _BUILDERS:
        raise ValueError(f"no tiny pipeline for family {family!r}; known: {', '.join(FAMILIES)}")
    _BUILDERS[family](seed).save_pretrained(str(folder))
    return folder
