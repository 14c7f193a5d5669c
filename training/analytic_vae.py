"""A stock diffusers ``AutoencoderKL`` whose *encoder* is set analytically.

Why: with flat-colour images, GroupNorm inside a randomly initialised
AutoencoderKL throws away absolute colour and the VAE needs thousands of steps
to relearn it -- far more than a 2-core CPU budget allows.  Instead the encoder
weights are written by hand so that it computes an exact, fixed function:

    latent = pixel_unshuffle(avg_pool_4x4(image), 2)      # (12, H/8, W/8)

i.e. a 4x-downsampled RGB image stored space-to-depth at 1/8 resolution
(channel index c*4 + dy*2 + dx, as ``torch.nn.functional.pixel_unshuffle``).
Residual branches / attention outputs are zeroed (identity), strided convs do
the pooling, and the final GroupNorm+SiLU is made exactly linear with an
"anchor" construction: every signal s sits in a group with -s and a large
constant pair (+A, -A), so the group mean is 0 and the std is ~A (independent
of the image); a +20 offset keeps SiLU in its linear range.

The *decoder* gets the same anchor construction at its output (so colours are
right from step 0) with a smooth upsampling initialisation, and is then trained
(supervised: analytic latent -> image).  The transformer trains on analytic
latents computed directly with ``analytic_latents`` (cheap), identical to
``vae.encode(x).latent_dist.mode()`` up to float error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

A = 1000.0  # anchor magnitude
OFF = 20.0  # SiLU linearisation offset
LATENT_CHANNELS = 12

VAE_CFG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=8,
    sample_size=128,
)


def analytic_latents(x: torch.Tensor) -> torch.Tensor:
    """x: (B,3,H,W) in [-1,1] -> (B,12,H/8,W/8) unscaled latents."""
    return F.pixel_unshuffle(F.avg_pool2d(x, 4), 2)


def _zero_(m):
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()


def _identity_resnet(r):
    """Make a ResnetBlock2D an identity (or its 1x1 shortcut, set separately)."""
    with torch.no_grad():
        r.conv2.weight.zero_()
        r.conv2.bias.zero_()


def _center(conv, out_c, in_c, val=1.0):
    k = conv.weight.shape[-1]
    conv.weight[out_c, in_c, k // 2, k // 2] = val


@torch.no_grad()
def build_analytic_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE_CFG)
    enc, dec = vae.encoder, vae.decoder
    # ---------------- encoder ----------------
    enc.conv_in.weight.zero_(); enc.conv_in.bias.zero_()
    for c in range(3):
        _center(enc.conv_in, c, c)
    for bi, blk in enumerate(enc.down_blocks):
        for r in blk.resnets:
            _identity_resnet(r)
            if r.conv_shortcut is not None:
                r.conv_shortcut.weight.zero_(); r.conv_shortcut.bias.zero_()
                for c in range(3):
                    r.conv_shortcut.weight[c, c, 0, 0] = 1.0
        if blk.downsamplers:
            conv = blk.downsamplers[0].conv
            conv.weight.zero_(); conv.bias.zero_()
            if bi < 2:  # 2x2 average
                for c in range(3):
                    conv.weight[c, c, 0:2, 0:2] = 0.25
            else:  # space-to-depth of the /4 image, with +- pairs and anchors per group of 8
                for c in range(3):
                    for dy in range(2):
                        for dx in range(2):
                            k = c * 4 + dy * 2 + dx
                            g, j = divmod(k, 3)
                            conv.weight[8 * g + 2 * j, c, dy, dx] = 1.0
                            conv.weight[8 * g + 2 * j + 1, c, dy, dx] = -1.0
                for g in range(4):
                    conv.bias[8 * g + 6] = A
                    conv.bias[8 * g + 7] = -A
    for r in enc.mid_block.resnets:
        _identity_resnet(r)
    for a in enc.mid_block.attentions:
        _zero_(a.to_out[0])
    # group of 8: 3 (+s,-s) pairs + (A,-A): mean 0, var = (2*sum s^2 + 2A^2)/8 ~ A^2/4 -> std A/2
    gn = enc.conv_norm_out
    gn.weight.zero_(); gn.bias.zero_()
    for g in range(4):
        for j in range(3):
            gn.weight[8 * g + 2 * j] = A / 2
            gn.bias[8 * g + 2 * j] = OFF
            gn.weight[8 * g + 2 * j + 1] = A / 2
            gn.bias[8 * g + 2 * j + 1] = OFF
    co = enc.conv_out
    co.weight.zero_(); co.bias.zero_()
    for k in range(LATENT_CHANNELS):
        g, j = divmod(k, 3)
        # (OFF + s) - (OFF - s) = 2s
        _center(co, k, 8 * g + 2 * j, 0.5)
        _center(co, k, 8 * g + 2 * j + 1, -0.5)
    co.bias[LATENT_CHANNELS:] = -20.0  # logvar: tiny std; pipelines use the mode anyway
    vae.quant_conv.weight.zero_(); vae.quant_conv.bias.zero_()
    for k in range(2 * LATENT_CHANNELS):
        vae.quant_conv.weight[k, k, 0, 0] = 1.0
    # ---------------- decoder (initialisation; trained afterwards) ----------------
    pq = vae.post_quant_conv
    pq.weight.zero_(); pq.bias.zero_()
    for k in range(LATENT_CHANNELS):
        pq.weight[k, k, 0, 0] = 1.0
    ci = dec.conv_in
    ci.weight.zero_(); ci.bias.zero_()
    for c in range(3):
        for s in range(4):
            _center(ci, c, c * 4 + s, 0.25)  # block mean
    for k in range(LATENT_CHANNELS):
        _center(ci, 3 + k, k, 1.0)  # raw sub-block channels for the learned refinement
    for r in dec.mid_block.resnets:
        _identity_resnet(r)
    for a in dec.mid_block.attentions:
        _zero_(a.to_out[0])
    smooth = torch.tensor([1.0, 2.0, 1.0])
    smooth = (smooth[:, None] * smooth[None, :]) / 16.0
    for blk in dec.up_blocks:
        for r in blk.resnets:
            _identity_resnet(r)
            if r.conv_shortcut is not None:  # last block 64 -> 32: build +-/anchor groups of 4
                sc = r.conv_shortcut
                sc.weight.zero_(); sc.bias.zero_()
                for c in range(3):
                    sc.weight[4 * c, c, 0, 0] = 1.0
                    sc.weight[4 * c + 1, c, 0, 0] = -1.0
                    sc.bias[4 * c + 2] = A
                    sc.bias[4 * c + 3] = -A
        if blk.upsamplers:
            conv = blk.upsamplers[0].conv
            conv.weight.zero_(); conv.bias.zero_()
            for c in range(3 + LATENT_CHANNELS):
                conv.weight[c, c] = smooth
    # the final up block has no shortcut only if channels match; (64 -> 32) has one.
    gn = dec.conv_norm_out  # GroupNorm(8, 32): groups of 4 = (s, -s, A, -A): std = A/sqrt(2)
    gn.weight.zero_(); gn.bias.zero_()
    for c in range(3):
        gn.weight[4 * c] = A / 2 ** 0.5
        gn.bias[4 * c] = OFF
        gn.weight[4 * c + 1] = A / 2 ** 0.5
        gn.bias[4 * c + 1] = OFF
    co = dec.conv_out
    co.weight.zero_(); co.bias.zero_()
    for c in range(3):
        _center(co, c, 4 * c, 0.5)
        _center(co, c, 4 * c + 1, -0.5)
    vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
    return vae


def decoder_parameters(vae):
    """Trainable decoder parameters.  The output GroupNorm and conv_out stay at their
    analytic values: they read (OFF + s) - (OFF - s), so small weight noise there
    would be amplified by OFF; everything before them (residual branches,
    upsamplers, attention) learns the refinement."""
    frozen = {id(p) for p in list(vae.decoder.conv_norm_out.parameters()) + list(vae.decoder.conv_out.parameters())}
    return [p for p in list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()) if id(p) not in frozen]


if __name__ == "__main__":
    import random

    from training import world
    from training.train import to_tensor

    torch.set_num_threads(2)
    vae = build_analytic_vae().eval()
    rng = random.Random(0)
    for asp in world.ASPECTS:
        x = torch.stack([to_tensor(world.render(world.sample_t2i(rng, aspect=asp)[2])) for _ in range(2)])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            y = vae.decode(z).sample
        ref = analytic_latents(x)
        err = (z - ref).abs().max().item()
        psnr = -10 * torch.log10(F.mse_loss(y, x) / 4).item()
        print(asp, tuple(z.shape), "max enc err %.2e" % err, "init decoder psnr %.2f" % psnr)
