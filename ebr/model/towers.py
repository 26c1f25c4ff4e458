"""Two-tower model: a request tower (query + member) and an item tower (job), cosine space.

Both towers read one shared table of hashed text n-grams and one shared table of hashed
categorical values, so 'nurse' in a query and 'nurse' in a title start from the same vector and
a member's city meets a job's city. Outputs are L2-normalised: dot product == cosine.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ebr.config import ModelConfig
from ebr.model.features import ITEM_CATS, ITEM_NUMS, REQUEST_CATS, REQUEST_NUMS


class SharedEmbeddings(nn.Module):
    """Hashed text n-gram table + hashed categorical table; id 0 is padding / missing."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.text = nn.Embedding(cfg.hash_buckets, cfg.token_dim, padding_idx=0)
        self.cat = nn.Embedding(cfg.cat_buckets, cfg.cat_dim, padding_idx=0)
        nn.init.normal_(self.text.weight, std=0.1)
        nn.init.normal_(self.cat.weight, std=0.1)
        with torch.no_grad():
            self.text.weight[0].zero_()
            self.cat.weight[0].zero_()

    def pool(self, ids: torch.Tensor) -> torch.Tensor:
        """Masked mean of token vectors: int64 [b, t] -> float [b, token_dim] (0 if empty)."""
        mask = (ids > 0).unsqueeze(-1).float()
        return (self.text(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class _Tower(nn.Module):
    """Pooled text fields + categorical embeddings + numeric features -> MLP -> unit vector."""

    def __init__(
        self, cfg: ModelConfig, emb: SharedEmbeddings, n_text: int, n_cats: int, n_nums: int
    ) -> None:
        super().__init__()
        self.emb = emb
        width = n_text * cfg.token_dim + n_cats * cfg.cat_dim + n_nums
        self.mlp = nn.Sequential(
            nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim)
        )

    def encode(
        self, texts: list[torch.Tensor], cats: torch.Tensor, nums: torch.Tensor
    ) -> torch.Tensor:
        pooled = [self.emb.pool(t) for t in texts]
        c = self.emb.cat(cats).flatten(1)  # [b, n_cats * cat_dim]
        return F.normalize(self.mlp(torch.cat([*pooled, c, nums], dim=1)), dim=-1)


class RequestTower(_Tower):
    def __init__(self, cfg: ModelConfig, emb: SharedEmbeddings | None = None) -> None:
        super().__init__(cfg, emb or SharedEmbeddings(cfg), 3, len(REQUEST_CATS), REQUEST_NUMS)

    def forward(
        self,
        query: torch.Tensor,
        headline: torch.Tensor,
        skills: torch.Tensor,
        cats: torch.Tensor,
        nums: torch.Tensor,
    ) -> torch.Tensor:
        """query/headline int64 [b,16], skills [b,48], cats [b,4], nums float [b,6] -> [b, dim]."""
        return self.encode([query, headline, skills], cats, nums)


class ItemTower(_Tower):
    def __init__(self, cfg: ModelConfig, emb: SharedEmbeddings | None = None) -> None:
        super().__init__(cfg, emb or SharedEmbeddings(cfg), 3, len(ITEM_CATS), ITEM_NUMS)

    def forward(
        self,
        title: torch.Tensor,
        body: torch.Tensor,
        skills: torch.Tensor,
        cats: torch.Tensor,
        nums: torch.Tensor,
    ) -> torch.Tensor:
        """title int64 [b,16], body [b,max_tokens], skills [b,48], cats [b,6], nums [b,5]
        -> float [b, dim], unit rows."""
        return self.encode([title, body, skills], cats, nums)


class TwoTower(nn.Module):
    """The training module: both towers over one SharedEmbeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        emb = SharedEmbeddings(cfg)
        self.request = RequestTower(cfg, emb)
        self.item = ItemTower(cfg, emb)


def in_batch_softmax_loss(
    req: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Softmax over in-batch negatives on cosine similarity.

    req, item: float [b, d] unit rows, row i of each is a positive pair; item_ids int64 [b].
    A job that appears twice in the batch is not a negative for its twin's request (masked),
    otherwise popular jobs would be pushed away from their own searchers.
    """
    if req.shape != item.shape:
        raise ValueError(f"request {tuple(req.shape)} and item {tuple(item.shape)} batches differ")
    logits = req @ item.T / temperature
    same = item_ids[None, :] == item_ids[:, None]
    eye = torch.eye(len(item_ids), dtype=torch.bool, device=req.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(req), device=req.device))
