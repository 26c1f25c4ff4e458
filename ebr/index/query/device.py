"""Exhaustive search with torch on an accelerator: the ``exact`` slot kind.

LinkedIn serves part of its retrieval as a brute-force scan on GPUs: every item scored by one
matrix product, the filter applied as a mask over the scores before the top-k (a pre-filter:
each page holds the best eligible rows, exactly, whatever the filter's selectivity). An
``exact`` slot is that: its FAISS index is a flat one (so every tool that reads slots works
unchanged), and on load its vectors are copied once to the device (``cuda`` when torch sees
one, else the CPU; ``EBR_EXACT_DEVICE`` overrides), where the planner sends its queries
(``planner.checked_search``: strategy ``exact_device``). On a CPU it is the flat scan through
torch; the benchmark (``benchmarks/device_exact.py``) puts it beside an IVF-PQ slot.

Memory: the vectors on the device (float32: 256 MB per 1M x 64) plus one block of scores,
at most ``SCORE_BYTES`` (``QUERY_BLOCK`` queries x n float32, fewer queries past 1M rows).
"""

from __future__ import annotations

import os
import warnings
import weakref
from typing import Any

import numpy as np

QUERY_BLOCK = 64  # queries scored at once, at most: bounds the [block, n] score matrix
SCORE_BYTES = 256 << 20  # ... and so does this: 6 queries a block at 10M rows
DEVICE_ENV = "EBR_EXACT_DEVICE"


def default_device() -> str:
    """``EBR_EXACT_DEVICE``, else ``cuda`` when torch sees a GPU, else ``cpu``."""
    chosen = os.environ.get(DEVICE_ENV)
    if chosen:
        return chosen
    import torch  # here: the planner imports this module, most processes never need torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DeviceExact:
    """The rows of one slot (float32 [n, d], unit) resident on ``device``."""

    def __init__(self, vectors: np.ndarray, device: str | None = None) -> None:
        import torch

        self.device = torch.device(device or default_device())
        with warnings.catch_warnings():  # a read-only memory map: never written through
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.vectors = host.to(self.device)  # a copy on an accelerator; shares memory on CPU
        self.n = len(vectors)

    def search(
        self, queries: np.ndarray, k: int, eligible: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of ``queries`` [q, d] among the ``eligible`` rows (bool [n], None:
        all): scores float32 [q, k] descending (-inf pads), rows int64 [q, k] (-1 pads)."""
        import torch

        nq = len(queries)
        scores = np.full((nq, k), -np.inf, np.float32)
        rows = np.full((nq, k), -1, np.int64)
        m = self.n if eligible is None else int(np.count_nonzero(eligible))
        take = min(k, m)
        if not nq or not take:
            return scores, rows
        blocked = None
        if eligible is not None and m < self.n:
            blocked = torch.from_numpy(~np.asarray(eligible, dtype=bool)).to(self.device)
        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        block = max(1, min(QUERY_BLOCK, SCORE_BYTES // (4 * self.n)))
        with torch.inference_mode():
            for start in range(0, nq, block):
                q = q_all[start : start + block].to(self.device)
                s = q @ self.vectors.T  # [block, n]
                if blocked is not None:
                    s.masked_fill_(blocked, float("-inf"))  # pre-filter: before the top-k
                top_s, top_i = torch.topk(s, take, dim=1)  # sorted, descending
                stop = start + len(q)
                scores[start:stop, :take] = top_s.cpu().numpy()
                rows[start:stop, :take] = top_i.cpu().numpy()
        return scores, rows


_ATTACHED: weakref.WeakKeyDictionary[Any, DeviceExact] = weakref.WeakKeyDictionary()


def attach(index: Any, vectors: np.ndarray, device: str | None = None) -> DeviceExact:
    """Serve ``index``'s searches from ``vectors`` on ``device`` (for as long as the index
    lives): the planner asks ``attached`` before anything else."""
    out = _ATTACHED[index] = DeviceExact(vectors, device)
    return out


def attached(index: Any) -> DeviceExact | None:
    return _ATTACHED.get(index)
