"""Tiny random-weight pipelines of each model family darkroom serves, built in code (no hub).

``build_tiny(family, folder)`` builds the family's diffusers pipeline at toy sizes (hidden sizes
8-48, one or two transformer blocks, 8x VAEs of 8-16 channels, vocabularies of a few hundred
tokens from ``tiny_tokenizers``), seeds every component's weights, and saves it with
``save_pretrained`` so that the family's pipeline class loads it with ``from_pretrained``,
offline. The same seed writes the same files. Shapes follow the real models wherever the
pipeline relies on them (latent packing, rope axes summing to the head size, the text-encoder
layers a pipeline reads, vision token ids, the template offsets Qwen-Image drops), so the
pipelines run with their default arguments and real diffusers code paths: 2 steps at 64x64
take a few hundredths of a second of CPU. Qwen-Image-Edit is the exception: diffusers encodes
each input image at about a megapixel whatever the output size (2.5 s of CPU per image).

Where transformers 5 needs torchvision (absent here: torch 2.13's CPU build has no matching
release), a torchvision-free equivalent is saved: FLUX.2 [dev] gets its Mistral tokenizer in
the ``tokenizer`` slot instead of a ``PixtralProcessor`` (the pipeline's text path only uses its
chat template), and Qwen-Image-Edit a ``Qwen2VLImageProcessorOnly`` (``qwen_vl_processor``).

Family names are the registry's ``pipeline =`` values:

    path = build_tiny("qwen-image-edit", tmp_path / "tiny-qwen-edit")
    pipe = QwenImageEditPlusPipeline.from_pretrained(path)  # or QwenImagePipeline, for text only
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


#: The 2D VAEs' blocks: four, so 8x like every real one here, at toy width.
_VAE_BLOCKS = {
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


def _flux2_vae(seed: int):
    from diffusers import AutoencoderKLFlux2

    # 4 latent channels, 2x2-patchified to the transformer's 16.
    return _seeded(seed, lambda: AutoencoderKLFlux2(**_VAE_BLOCKS, latent_channels=4, sample_size=64))


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
_FLUX_SHIFTING = {
    "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15,
    "use_dynamic_shifting": True,
}

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


def _qwen_vl_encoder(seed: int, tokenizer):
    """A tiny Qwen2.5-VL (Qwen-Image's text encoder), its vision token ids those of ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_DIM,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1000000.0},
            "bos_token_id": None,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": TEXT_DIM,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": TEXT_DIM,
            "patch_size": 14,  # the image processor's, below
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    return _seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))


def _qwen_image_parts(seed: int) -> dict[str, Any]:
    """The components Qwen-Image and its editing pipelines share."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    from darkroom.testing.tiny_tokenizers import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    z_dim = 4
    vae = _seeded(seed + 2, lambda: AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # three downsamplings: 8x, as Qwen-Image's VAE
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    ))
    transformer = _seeded(seed + 3, lambda: QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * z_dim,  # 2x2 patches of latent pixels, packed into channels
        out_channels=z_dim,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        axes_dims_rope=(8, 4, 4),  # summing to the head size
    ))
    # Qwen-Image's scheduler: exponential time shift growing with the token count.
    scheduler = _flow_scheduler(
        base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5, max_shift=0.9, shift=1.0,
        shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True,
    )
    return {
        "scheduler": scheduler, "vae": vae, "text_encoder": _qwen_vl_encoder(seed + 1, tokenizer),
        "tokenizer": tokenizer, "transformer": transformer,
    }


def _qwen_image(seed: int):
    from diffusers import QwenImagePipeline

    return QwenImagePipeline(**_qwen_image_parts(seed))


def _qwen_image_edit(seed: int):
    from diffusers import QwenImageEditPlusPipeline
    from transformers import Qwen2VLImageProcessorPil

    from darkroom.testing.qwen_vl_processor import Qwen2VLImageProcessorOnly

    parts = _qwen_image_parts(seed)
    # Few pixels per image for the vision tower (the pipeline hands it 384x384 images):
    # 112x112 at most, 8x8 patches of 14, 16 tokens after the 2x2 merge. The PIL image
    # processor and no video processor: transformers 5 builds those only with torchvision.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLImageProcessorOnly(image_processor=image_processor, tokenizer=parts["tokenizer"])
    return QwenImageEditPlusPipeline(**parts, processor=processor)


def _qwen3_config(tokenizer, layers: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def _flux_vae(seed: int, latent_channels: int, *, scaling_factor: float, shift_factor: float):
    """FLUX.1's VAE shape (8x, no quant convs) at toy width: Z-Image, Chroma and SD3 use it."""
    from diffusers import AutoencoderKL

    return _seeded(seed, lambda: AutoencoderKL(
        **_VAE_BLOCKS,
        latent_channels=latent_channels,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    ))


def _z_image(seed: int):
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    from darkroom.testing.tiny_tokenizers import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    config = _qwen3_config(tokenizer, 2)  # the pipeline reads the second-to-last hidden state
    transformer = _seeded(seed + 3, lambda: ZImageTransformer2DModel(
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TEXT_DIM,
        axes_dims=[8, 4, 4],  # summing to the head size
        axes_lens=[1024, 128, 128],
    ))
    return ZImagePipeline(
        scheduler=_flow_scheduler(shift=3.0, use_dynamic_shifting=False),  # Z-Image Turbo's
        vae=_flux_vae(seed + 2, 16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_seeded(seed + 1, lambda: Qwen3Model(config)),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _flux2_klein(seed: int):
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3ForCausalLM

    from darkroom.testing.tiny_tokenizers import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    config = _qwen3_config(tokenizer, KLEIN_LAYERS)
    return Flux2KleinPipeline(
        scheduler=_flow_scheduler(**_FLUX_SHIFTING),
        vae=_flux2_vae(seed + 2),
        text_encoder=_seeded(seed + 1, lambda: Qwen3ForCausalLM(config)),
        tokenizer=tokenizer,
        transformer=_flux2_transformer(seed + 3, 3 * TEXT_DIM, guidance_embeds=False),
        is_distilled=True,  # as FLUX.2 [klein] 4B: few steps, no CFG
    )


#: T5 v1.1 (gated GELU, relative attention) at toy width: Chroma's and SD3's long-prompt encoder.
T5_DIM = 32


def _t5_encoder(seed: int, tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return _seeded(seed, lambda: T5EncoderModel(config))


def _chroma(seed: int):
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    from darkroom.testing.tiny_tokenizers import t5_tokenizer

    tokenizer = t5_tokenizer()
    transformer = _seeded(seed + 3, lambda: ChromaTransformer2DModel(
        in_channels=16,  # 2x2 patches of 4 latent channels, packed as in FLUX.1
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        axes_dims_rope=(4, 6, 6),  # summing to the head size
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    ))
    return ChromaPipeline(
        scheduler=_flow_scheduler(**_FLUX_SHIFTING, shift=3.0),
        vae=_flux_vae(seed + 2, 4, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_t5_encoder(seed + 1, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )


#: Hidden size of each tiny CLIP text encoder; SD3 joins both (2 x 16 = T5_DIM) before T5's.
CLIP_DIM = 16


def _clip_encoder(seed: int, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_DIM,
        intermediate_size=32,
        projection_dim=CLIP_DIM,
        num_hidden_layers=2,  # SD3 reads the second-to-last hidden state
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _seeded(seed, lambda: CLIPTextModelWithProjection(config))


def _sd3(seed: int):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from darkroom.testing.tiny_tokenizers import clip_tokenizer, t5_tokenizer

    clip, t5 = clip_tokenizer(), t5_tokenizer()
    transformer = _seeded(seed + 4, lambda: SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        caption_projection_dim=16,  # the transformer's width, heads x head size
        pooled_projection_dim=2 * CLIP_DIM,  # both CLIPs' pooled outputs, joined
        pos_embed_max_size=32,
        qk_norm="rms_norm",  # as SD3.5
    ))
    return StableDiffusion3Pipeline(
        scheduler=_flow_scheduler(shift=3.0),
        vae=_flux_vae(seed + 5, 16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_clip_encoder(seed + 1, clip),
        tokenizer=clip,
        text_encoder_2=_clip_encoder(seed + 2, clip),
        tokenizer_2=clip,
        text_encoder_3=_t5_encoder(seed + 3, t5),
        tokenizer_3=t5,
        transformer=transformer,
    )


_BUILDERS: dict[str, Callable[[int], Any]] = {
    "flux2": _flux2,
    "qwen-image": _qwen_image,
    "qwen-image-edit": _qwen_image_edit,
    "z-image": _z_image,
    "flux2-klein": _flux2_klein,
    "chroma": _chroma,
    "sd3": _sd3,
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
