"""Pipeline families: what darkroom knows about each kind of diffusers pipeline, in one table.

A registry entry names its family with ``pipeline = "..."``. Everything model-specific that is
not a per-model setting reads this table: the registry (valid names, ``editing``, modalities),
the payload parameters (``params.standard_params``: input-image fields, guidance and steps
defaults and ranges, so validation, model info and the OpenAPI schemas), and the engine (which
diffusers class to load, which call arguments ``guidance`` becomes, how to read the latents for
previews). Per-model ``[models.X.parameters]`` still apply on top.

Torch-free: the API process imports it.

Guidance modes (what the payload's ``guidance`` becomes in the pipeline call):

- ``distilled``: a guidance *embedding* the model was distilled with: ``guidance_scale`` (one
  transformer pass a step). FLUX.1 [dev], Kontext, FLUX.2 [dev].
- ``true_cfg``: classifier-free guidance on a model without a guidance embedding, through
  ``true_cfg_scale`` and a ``negative_prompt`` (two passes a step when above 1). Qwen-Image.
- ``cfg``: classifier-free guidance through ``guidance_scale`` (two passes a step when it is on);
  ``negative_prompt`` says whether the pipeline takes one (FLUX.2 [klein] base uses an empty one
  itself). SD3, Chroma, Z-Image, FLUX.2 [klein] base.
- ``none``: the model ignores guidance (step-distilled FLUX.2 [klein]); the payload admits only
  the family's fixed value, and nothing is passed.

Defaults are the model cards' (and the pipelines' own ``__call__`` defaults where the card says
nothing), as of diffusers 0.42.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GuidanceMode = Literal["distilled", "true_cfg", "cfg", "none"]
#: How the latents handed to ``callback_on_step_end`` are laid out:
#: ``packed``: (batch, tokens, channels x 2 x 2), 2x2 latent patches in row-major token order
#: (FLUX.1, Chroma, Qwen-Image, FLUX.2). ``grid``: (batch, channels, rows, cols) (SD3, Z-Image).
LatentLayout = Literal["packed", "grid"]
#: How the pipeline's latents relate to what its VAE decodes:
#: ``shift_scale``: z / scaling_factor + shift_factor (FLUX.1's VAE, SD3's);
#: ``mean_std``: z * latents_std + latents_mean, per channel, with a frame axis (Qwen-Image's Wan VAE);
#: ``batch_norm``: the 2x2 patches de-normalised by the VAE's batch-norm statistics, then unpatched (FLUX.2).
LatentScaling = Literal["shift_scale", "mean_std", "batch_norm"]

#: The most input images any family takes (``input_image``, ``input_image_2`` .. ``input_image_8``).
MAX_INPUT_IMAGES = 8


@dataclass(frozen=True)
class Range:
    """A payload number's default and bounds."""

    default: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Family:
    """One pipeline family (a ``pipeline =`` value of the registry)."""

    name: str
    text_to_image: str | None  # diffusers class for text-only requests; None: the family only edits
    edit: str | None  # diffusers class for requests with input images; None: text only
    guidance_mode: GuidanceMode
    guidance: Range
    steps: Range
    max_input_images: int = 0  # 0: text only
    # Several references become one image side by side (Kontext takes one per prompt).
    stitch_references: bool = False
    # Whether input images are given per prompt (a batch of edits with different images can share
    # a call) or per call (the list is one request's references: edits run one request a call).
    images_per_prompt: bool = False
    min_image_side: int = 0  # input images smaller than this on a side are refused by the pipeline
    negative_prompt: bool = False  # the pipeline takes ``negative_prompt`` (true_cfg / cfg)
    default_negative_prompt: str = ""
    batched_prompts: bool = True  # the pipeline takes a list of prompts (Qwen edit: one at a time)
    max_sequence_length: int = 512  # the text encoder's limit, for the ``max_sequence_length`` option
    latent_layout: LatentLayout = "packed"
    latent_scaling: LatentScaling = "shift_scale"
    # Kontext's ``max_area``: the pipeline rescales the output to about this many pixels unless told.
    takes_max_area: bool = False
    step_callback: bool = True  # ``callback_on_step_end``: progress, previews and cancel
    interrupt: bool = True  # the pipeline honours ``_interrupt`` (skips the remaining steps)
    description: str = ""

    @property
    def pipeline_class(self) -> str:
        """The one class a model of this family loads (the editing one serves text too where it can)."""
        name = self.edit or self.text_to_image
        assert name is not None
        return name

    @property
    def editing(self) -> bool:
        return self.max_input_images > 0

    @property
    def needs_image(self) -> bool:
        """Requests must carry an input image (the family has no text-to-image class)."""
        return self.text_to_image is None

    @property
    def model_type(self) -> str:
        return "image-editing" if self.editing else "text-to-image"

    def guidance_description(self) -> str:
        return _GUIDANCE_TEXT[self.guidance_mode]


_GUIDANCE_TEXT: dict[GuidanceMode, str] = {
    "distilled": "Guidance scale (the model's distilled guidance embedding): how closely the image follows the prompt.",
    "true_cfg": "True classifier-free guidance scale against a negative prompt (1 turns it off; above 1 costs "
                "two transformer passes per step).",
    "cfg": "Classifier-free guidance scale (off at or below the model's threshold; on, it costs two transformer "
           "passes per step).",
    "none": "Not used by this model (step-distilled): only its fixed value is accepted.",
}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        "flux", text_to_image="FluxPipeline", edit=None, guidance_mode="distilled",
        guidance=Range(3.5, 0.0, 20.0), steps=Range(28, 1, 100),
        description="FLUX.1 [dev] / [schnell]: text-to-image."),
    Family(
        "flux-kontext", text_to_image="FluxKontextPipeline", edit="FluxKontextPipeline", guidance_mode="distilled",
        guidance=Range(2.5, 0.0, 20.0), steps=Range(28, 1, 100), max_input_images=4, stitch_references=True,
        images_per_prompt=True, takes_max_area=True,
        description="FLUX.1 Kontext [dev]: text-to-image and editing; FluxKontextPipeline takes one image per "
                    "prompt, so extra references are joined side by side into one."),
    Family(
        "flux2", text_to_image="Flux2Pipeline", edit="Flux2Pipeline", guidance_mode="distilled",
        guidance=Range(4.0, 0.0, 20.0), steps=Range(50, 1, 100), max_input_images=8,
        latent_scaling="batch_norm", min_image_side=64,
        description="FLUX.2 [dev]: text-to-image and multi-reference editing."),
    Family(
        "flux2-klein", text_to_image="Flux2KleinPipeline", edit="Flux2KleinPipeline", guidance_mode="none",
        guidance=Range(1.0, 1.0, 1.0), steps=Range(4, 1, 50), max_input_images=4,
        latent_scaling="batch_norm", min_image_side=64,
        description="FLUX.2 [klein] (step-distilled 4B/9B): text-to-image and multi-reference editing in 4 steps."),
    Family(
        "flux2-klein-base", text_to_image="Flux2KleinPipeline", edit="Flux2KleinPipeline", guidance_mode="cfg",
        guidance=Range(4.0, 1.0, 20.0), steps=Range(50, 1, 100), max_input_images=4,
        latent_scaling="batch_norm", min_image_side=64,
        description="FLUX.2 [klein] base (not distilled): classifier-free guidance with an empty negative prompt."),
    Family(
        "qwen-image", text_to_image="QwenImagePipeline", edit=None, guidance_mode="true_cfg",
        guidance=Range(4.0, 1.0, 20.0), steps=Range(50, 1, 100), negative_prompt=True,
        default_negative_prompt=" ", max_sequence_length=1024, latent_scaling="mean_std",
        description="Qwen-Image: text-to-image, strong at text in images."),
    Family(
        "qwen-image-edit", text_to_image=None, edit="QwenImageEditPlusPipeline", guidance_mode="true_cfg",
        guidance=Range(4.0, 1.0, 20.0), steps=Range(40, 1, 100), max_input_images=3, negative_prompt=True,
        default_negative_prompt=" ", batched_prompts=False, max_sequence_length=1024,
        latent_scaling="mean_std",
        description="Qwen-Image-Edit (2509 and later, QwenImageEditPlusPipeline): edits one to three images; "
                    "an input image is required."),
    Family(
        "z-image", text_to_image="ZImagePipeline", edit=None, guidance_mode="cfg",
        guidance=Range(0.0, 0.0, 20.0), steps=Range(9, 1, 100), negative_prompt=True, latent_layout="grid",
        description="Z-Image (Turbo: 9 steps, guidance 0; the base model: about 50 steps with guidance)."),
    Family(
        "chroma", text_to_image="ChromaPipeline", edit=None, guidance_mode="cfg",
        guidance=Range(3.0, 1.0, 20.0), steps=Range(40, 1, 100), negative_prompt=True,
        description="Chroma (FLUX.1 [schnell]-based, de-distilled): text-to-image with classifier-free guidance."),
    Family(
        "sd3", text_to_image="StableDiffusion3Pipeline", edit=None, guidance_mode="cfg",
        guidance=Range(7.0, 1.0, 20.0), steps=Range(28, 1, 100), negative_prompt=True, latent_layout="grid",
        max_sequence_length=512,
        description="Stable Diffusion 3 / 3.5: text-to-image with classifier-free guidance."),
)}

def get_family(name: str) -> Family:
    """The family called ``name``; raises ValueError naming the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"pipeline must be one of {', '.join(FAMILIES)} (got {name!r})") from None


def input_image_fields(count: int) -> tuple[str, ...]:
    """The payload fields of ``count`` input images: ``input_image``, ``input_image_2`` .. ``input_image_<count>``."""
    return tuple("input_image" if i == 1 else f"input_image_{i}" for i in range(1, count + 1))
