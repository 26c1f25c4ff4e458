"""Two-tower model: a request tower (query + member + context) and an item tower, cosine space.

Both towers read one shared table of hashed text n-grams and one shared table of hashed
categorical values, so 'nurse' in a query and 'nurse' in a title start from the same vector and
a member's city meets a job's city. Outputs are L2-normalised: dot product == cosine.

Which inputs a tower reads is a ``TowerSpec`` (named text fields, categorical and numeric
widths), passed in by the caller (``ebr.model.specs`` picks one by ``ModelConfig.schema``):
the job marketplace and MovieLens share this module, the loss and the training loop; only
their featurizers differ.

Multi-task: the request tower ends in one linear head per task (apply, save, click) over a
shared body; the item tower is shared by every task, so one job index serves all of them and a
request picks its task's head (``ModelConfig.serve_task`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ebr.config import ModelConfig


@dataclass(frozen=True)
class TowerSpec:
    """The named inputs of one tower: text fields (int64 [b, width] ids), cats, nums."""

    texts: tuple[str, ...]
    n_cats: int  # int64 [b, n_cats] ids in the shared categorical table
    n_nums: int  # float32 [b, n_nums] numeric features (incl. looked-up embeddings)
    skip: str | None = None  # text field on the lexical path (ModelConfig.lexical)


class SharedEmbeddings(nn.Module):
    """Hashed text n-gram table + hashed categorical table; id 0 is padding / missing.

    Sparse gradients: a batch touches a few thousand of the 131k rows, so training updates only
    those (SparseAdam, see ebr.model.train.fit) instead of the whole table every step.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.text = nn.Embedding(cfg.hash_buckets, cfg.token_dim, padding_idx=0, sparse=True)
        self.cat = nn.Embedding(cfg.cat_buckets, cfg.cat_dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.text.weight, std=0.1)
        nn.init.normal_(self.cat.weight, std=0.1)
        # The lexical path: one projection shared by both towers, so a query and a title that
        # share words (or trigrams) share this part of their embeddings from the first step.
        self.lexical = nn.Linear(cfg.token_dim, cfg.dim, bias=False) if cfg.lexical else None
        with torch.no_grad():
            self.text.weight[0].zero_()
            self.cat.weight[0].zero_()

    def pool(self, ids: torch.Tensor) -> torch.Tensor:
        """Masked mean of token vectors: int64 [b, t] -> float [b, token_dim] (0 if empty)."""
        mask = (ids > 0).unsqueeze(-1).float()
        return (self.text(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Tower(nn.Module):
    """Pooled text fields + categorical embeddings + numeric features -> MLP -> unit vector(s).

    With ``tasks`` the MLP output feeds one bias-free linear head per task (initialised to the
    identity, so every head starts as the shared embedding); without, the MLP output is used.
    With ``ModelConfig.lexical`` and a ``spec.skip`` field (the query, the job title), the
    shared ``SharedEmbeddings.lexical`` projection of that field's pooled text is added before
    normalising: the MLP mixes text with everything else and learned only what the log
    taught it, while this path keeps the words themselves, so an occupation no one searched
    for still matches its own title (issue 9's typed queries).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        spec: TowerSpec,
        emb: SharedEmbeddings | None = None,
        tasks: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.emb = emb or SharedEmbeddings(cfg)
        width = len(spec.texts) * cfg.token_dim + spec.n_cats * cfg.cat_dim + spec.n_nums
        self.mlp = nn.Sequential(
            nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim)
        )
        self.tasks = tuple(tasks)  # heads[i] belongs to tasks[i]
        heads = [nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in tasks]
        for head in heads:
            nn.init.eye_(head.weight)
        self.heads = nn.ModuleList(heads)

    def body(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Un-normalised shared representation: float [b, dim]."""
        missing = [f for f in (*self.spec.texts, "cats", "nums") if f not in inputs]
        if missing:
            raise KeyError(f"tower inputs lack {missing}; got {sorted(inputs)}")
        pooled = [self.emb.pool(inputs[f]) for f in self.spec.texts]
        c = self.emb.cat(inputs["cats"]).flatten(1)  # [b, n_cats * cat_dim]
        return self.mlp(torch.cat([*pooled, c, inputs["nums"]], dim=1))

    def head(
        self, h: torch.Tensor, task: str | None, lexical: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Task head on a body output (+ the lexical path's output) -> float [b, dim] unit
        rows."""
        if self.tasks:
            name = task or self.cfg.serve_task
            if name not in self.tasks:
                raise KeyError(f"unknown task {name!r}; this tower has {list(self.tasks)}")
            h = self.heads[self.tasks.index(name)](h)
        if lexical is not None:
            h = h + lexical
        return F.normalize(h, dim=-1)

    def lexical(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The shared projection of the ``spec.skip`` field's pooled text: float [b, dim]
        (None without a lexical path)."""
        if self.emb.lexical is None or self.spec.skip is None:
            return None
        return self.emb.lexical(self.emb.pool(inputs[self.spec.skip]))

    def forward(self, task: str | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """Named inputs of the spec (each [b, ...]) -> float [b, dim] unit rows."""
        return self.head(self.body(inputs), task, self.lexical(inputs))

    def every_head(self, **inputs: torch.Tensor) -> torch.Tensor:
        """float [len(tasks), b, dim] unit rows: each task head on one body pass (the shared
        output alone, [1, b, dim], for a tower without tasks)."""
        h, lexical = self.body(inputs), self.lexical(inputs)
        names: tuple[str | None, ...] = self.tasks or (None,)
        return torch.stack([self.head(h, t, lexical) for t in names])


class RequestTower(Tower):
    """Query text + member profile + member-interest embedding + context; one head per task."""

    def __init__(
        self, cfg: ModelConfig, spec: TowerSpec, emb: SharedEmbeddings | None = None
    ) -> None:
        super().__init__(cfg, spec, emb, cfg.tasks)


class ItemTower(Tower):
    """Item content (jobs: title, description, skills, company, industry, location, ...)."""

    def __init__(
        self, cfg: ModelConfig, spec: TowerSpec, emb: SharedEmbeddings | None = None
    ) -> None:
        super().__init__(cfg, spec, emb)


class TwoTower(nn.Module):
    """The training module: both towers over one SharedEmbeddings; ``specs`` is (request
    spec, item spec), chosen by the caller (``ebr.model.specs.tower_specs``)."""

    def __init__(self, cfg: ModelConfig, specs: tuple[TowerSpec, TowerSpec]) -> None:
        super().__init__()
        self.cfg = cfg
        emb = SharedEmbeddings(cfg)
        self.request = RequestTower(cfg, specs[0], emb)
        self.item = ItemTower(cfg, specs[1], emb)


def in_batch_softmax_loss(
    req: torch.Tensor,
    item: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    hard: torch.Tensor | None = None,
    hard_ids: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over in-batch negatives (plus optional hard negatives) on cosine similarity.

    Args:
        req, item: float [b, d] unit rows; row i of each is a positive pair.
        item_ids: int64 [b]. A job that appears twice in the batch is not a negative for its
            twin's request (masked), otherwise popular jobs would be pushed from their searchers.
        temperature: cosine logits are divided by it.
        log_q: float [b], log of the probability that item i enters a batch (its share of the
            training positives). In-batch negatives over-sample popular items, so the model
            would learn to push them down; subtracting log q from each in-batch logit (the logQ
            / sampling-bias correction) makes the softmax estimate the full-catalogue one.
        hard, hard_ids: float [h, d] unit rows and int64 [h] ids of extra negatives that every
            row competes against (mixed negatives: impressed-not-engaged, same title in
            another city); id -1 marks an empty slot. They are not popularity-sampled, so logQ
            does not apply to them; a row's own positive among them is masked.
        rows: bool [b], which rows are positives of this loss (e.g. the applies for the apply
            head). Every item of the batch stays a negative for every selected row.

    Returns:
        The mean cross-entropy over the selected rows (0 if none is selected).
    """
    if req.shape != item.shape:
        raise ValueError(f"request {tuple(req.shape)} and item {tuple(item.shape)} batches differ")
    if not 0 < temperature <= 1:
        raise ValueError(f"temperature must be in (0, 1], got {temperature}")
    b = len(req)
    logits = req @ item.T / temperature
    if log_q is not None:
        if log_q.shape != (b,):
            raise ValueError(f"log_q must have shape ({b},), got {tuple(log_q.shape)}")
        logits = logits - log_q[None, :]
    same = item_ids[None, :] == item_ids[:, None]
    eye = torch.eye(b, dtype=torch.bool, device=req.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    if hard is not None:
        if hard_ids is None or hard_ids.shape != (len(hard),):
            raise ValueError("hard negatives need hard_ids of shape (h,)")
        extra = req @ hard.T / temperature  # [b, h]
        blocked = (hard_ids[None, :] == item_ids[:, None]) | (hard_ids[None, :] < 0)
        logits = torch.cat([logits, extra.masked_fill(blocked, float("-inf"))], dim=1)
    target = torch.arange(b, device=req.device)
    if rows is not None:
        if not bool(rows.any()):
            return req.sum() * 0.0  # keeps the graph; no positive of this task in the batch
        logits, target = logits[rows], target[rows]
    return F.cross_entropy(logits, target)
