"""Step previews: one job's latents, as a pipeline hands them to its step callback, to a small RGB image.

Two ways, chosen per model (the ``preview`` option; ``auto`` by the VAE's size):

- ``projection``: a linear map from latent channels to RGB (3 x C and a bias), applied to the
  latent grid itself: no VAE at all, so it costs next to nothing on a 12B model and never moves
  an offloaded VAE to the GPU. The map is fitted at load by least squares on the model's own VAE
  (``fit_projection``: one encode of a few synthetic colour images), so it holds for any VAE,
  including fine-tuned ones, without a table of factors per family.
- ``decode``: shrink the latent grid (area average) so that the decoded long side is at most
  ``PREVIEW_MAX_SIDE``, and decode it with the VAE. Exact colours; for small VAEs (darkroom-mini's,
  the tests' tiny ones) it is cheap, for FLUX's 84M-parameter decoder it is not.

Both read the pipeline's latents through the family's layout (``families.LatentLayout`` and
``LatentScaling``), written out here from the pipelines' own ``prepare_latents`` and decode code
(diffusers 0.42) rather than through their private ``_unpack_latents`` helpers, whose signatures
differ between families and releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from darkroom.engines.base import PREVIEW_MAX_SIDE
from darkroom.engines.families import Family

#: VAEs with fewer decoder parameters than this decode previews (cheap); larger ones project.
SMALL_DECODER = 10_000_000


@dataclass(frozen=True)
class Projection:
    """Latent channels (of the VAE's raw latents) to RGB in [-1, 1]: ``rgb = weight @ z + bias``."""

    weight: torch.Tensor  # (3, C)
    bias: torch.Tensor  # (3,)


def vae_grid(family: Family, pipe: Any, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The VAE's raw latents (batch, C, rows, cols) of the pipeline's ``latents`` for a
    ``width`` x ``height`` generation: what ``pipe.vae.decode`` takes (less Qwen's frame axis)."""
    vae = pipe.vae
    if family.latent_layout == "packed":
        rows, cols = height // (pipe.vae_scale_factor * 2), width // (pipe.vae_scale_factor * 2)
        batch, tokens, channels = latents.shape
        grid = latents.transpose(1, 2).reshape(batch, channels, rows, cols)  # tokens are row-major
        if family.latent_scaling == "batch_norm":  # FLUX.2 normalises the 2x2 patches, then unpatches
            mean = vae.bn.running_mean.view(1, -1, 1, 1).to(grid)
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(grid)
            return _unpatch(grid * std + mean)
        grid = _unpatch(grid)
    else:
        grid = latents
    if family.latent_scaling == "mean_std":
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(grid)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(grid)
        return grid * std + mean
    return grid / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)


def _unpatch(grid: torch.Tensor) -> torch.Tensor:
    """(B, C*4, r, c) with channels ordered (C, dy, dx), as FLUX packs them, to (B, C, 2r, 2c)."""
    batch, channels, rows, cols = grid.shape
    grid = grid.reshape(batch, channels // 4, 2, 2, rows, cols).permute(0, 1, 4, 2, 5, 3)
    return grid.reshape(batch, channels // 4, rows * 2, cols * 2)


def preview_mode(pipe: Any, option: str) -> str:
    """``projection`` or ``decode`` for this pipeline, given the ``preview`` option."""
    if option != "auto":
        return option
    decoder = getattr(pipe.vae, "decoder", None)
    size = sum(p.numel() for p in decoder.parameters()) if decoder is not None else SMALL_DECODER
    return "decode" if size < SMALL_DECODER else "projection"


def decode_preview(family: Family, pipe: Any, grid: torch.Tensor) -> Image.Image:
    """One job's raw latent grid (1, C, rows, cols), shrunk and decoded by the VAE."""
    scale = pipe.vae_scale_factor
    rows, cols = grid.shape[-2:]
    limit = max(1, PREVIEW_MAX_SIDE // scale)
    if max(rows, cols) > limit:
        shrink = limit / max(rows, cols)
        grid = F.interpolate(grid, size=(max(1, round(rows * shrink)), max(1, round(cols * shrink))), mode="area")
    vae = pipe.vae
    frames = family.latent_scaling == "mean_std"  # Qwen-Image's VAE is a video VAE: one frame
    with torch.no_grad():
        decoded = vae.decode((grid[:, :, None] if frames else grid).to(vae.dtype), return_dict=False)[0]
    return _to_pil(decoded[:, :, 0] if frames else decoded)


def project_preview(projection: Projection, grid: torch.Tensor) -> Image.Image:
    """One job's raw latent grid (1, C, rows, cols) through ``projection``, long side <= PREVIEW_MAX_SIDE."""
    rgb = torch.einsum("oc,bchw->bohw", projection.weight.to(grid), grid) + projection.bias.to(grid).view(1, 3, 1, 1)
    image = _to_pil(rgb)
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))  # at most one latent pixel's worth of upscale below
    if max(image.size) < PREVIEW_MAX_SIDE // 2:
        factor = max(1, (PREVIEW_MAX_SIDE // 2) // max(image.size))
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.BILINEAR)
    return image


def fit_projection(family: Family, pipe: Any, *, size: int = 256, seed: int = 0) -> Projection:
    """Fit the latent-to-RGB map of ``pipe.vae`` (least squares over every latent pixel of a few
    synthetic images: flat colours, gradients and blocks, each pixel's colour averaged over the
    patch it encodes to). One VAE encode of ``size`` x ``size`` images, at load."""
    vae = pipe.vae
    images = _calibration_images(size, seed)  # (N, 3, size, size) in [-1, 1]
    param = next(vae.parameters())
    x = images.to(param.device, param.dtype)
    frames = family.latent_scaling == "mean_std"
    with torch.no_grad():
        latents = vae.encode(x[:, :, None] if frames else x).latent_dist.mean
    if frames:
        latents = latents[:, :, 0]
    latents = latents.float().cpu()
    rows, cols = latents.shape[-2:]
    target = F.interpolate(images, size=(rows, cols), mode="area")
    z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([z, torch.ones(len(z), 1)], dim=1)
    solution = torch.linalg.lstsq(design.double(), y.double()).solution.float()  # (C + 1, 3)
    return Projection(weight=solution[:-1].T.contiguous(), bias=solution[-1].contiguous())


def _calibration_images(size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    images = []
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    for k in range(8):
        img = np.empty((3, size, size), np.float32)
        if k < 2:  # gradients, one channel per axis
            img[0] = ramp[None, :]
            img[1] = ramp[:, None]
            img[2] = -ramp[None, :] if k else ramp[:, None] * ramp[None, :]
        else:  # random flat blocks of decreasing size
            blocks = 2 ** (1 + k % 4)
            colours = rng.uniform(-1.0, 1.0, (3, blocks, blocks)).astype(np.float32)
            img = np.repeat(np.repeat(colours, size // blocks, axis=1), size // blocks, axis=2)
        images.append(img)
    return torch.from_numpy(np.stack(images))


def _to_pil(decoded: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] to an RGB image, as diffusers' ``VaeImageProcessor.postprocess`` does."""
    array = (decoded[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8))
