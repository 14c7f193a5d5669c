"""Qwen2-VL's processor without its video half, for hosts without torchvision.

Qwen-Image-Edit's pipelines hand prompts and input images to a ``Qwen2VLProcessor``. In
transformers 5 that class takes a video processor too, which exists only with torchvision,
and torch 2.13's CPU build has no matching torchvision: the plain class cannot even be built.
This subclass declares only the image processor and the tokenizer, so it builds, saves and
loads (``from_pretrained``) without torchvision; everything it does with text and images is
``Qwen2VLProcessor``'s own code. A pipeline saved with it records this module and class in
``model_index.json``, and diffusers imports it from there when loading.
"""

from __future__ import annotations

# ProcessorMixin is imported here for diffusers: it finds a custom component's loading method
# by looking its base classes up by name in the component's own module.
from transformers import ProcessorMixin, Qwen2VLProcessor

__all__ = ["ProcessorMixin", "Qwen2VLImageProcessorOnly"]


class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
    """A ``Qwen2VLProcessor`` for text and images only (videos are refused: no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The processor's sub-parts are read from this signature: image processor and tokenizer.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
