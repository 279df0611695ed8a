"""Training losses, separate from the encoders: each scores user vectors against item vectors.

Every loss takes `user` (M, d) — one vector per predicted position —, `target` (M,) internal
item ids ≥ 1, and `items` (N + 1, d) from `model.item_embeddings()` (row 0 = padding, never a
candidate).
- `ce`: full softmax over the catalogue ("SASRec+", Klenitskiy & Vasilev 2023).
- `bce`: one uniform negative per position against the positive (the SASRec paper).
- `sampled`: softmax over the positive and `n_negatives` uniform negatives shared by the batch.
- `inbatch`: softmax over the batch's other targets, logits minus log popularity (logQ
  correction, Yi et al. 2019), since popular items are over-represented as negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "bce", "sampled", "inbatch")


class Loss(nn.Module):
    def __init__(
        self, name: str, n_items: int, n_negatives: int = 256, item_counts: torch.Tensor | None = None
    ):
        super().__init__()
        if name not in LOSSES:
            from batchrec.errors import UserError

            raise UserError(f"unknown loss {name!r}", fix=f"choose one of: {', '.join(LOSSES)}")
        self.name, self.n_items, self.n_negatives = name, n_items, n_negatives
        counts = item_counts if item_counts is not None else torch.ones(n_items + 1)
        log_q = torch.log(counts.float().clamp(min=1) / counts.float().clamp(min=1).sum())
        self.register_buffer("log_q", log_q, persistent=False)

    def forward(
        self,
        user: torch.Tensor,
        target: torch.Tensor,
        items: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if self.name == "ce":
            logits = user @ items.T  # (M, N + 1)
            logits[:, 0] = float("-inf")
            return F.cross_entropy(logits.float(), target)
        pos = (user * items[target]).sum(-1)  # (M,)
        if self.name == "bce":
            neg_ids = torch.randint(
                1, self.n_items + 1, target.shape, generator=generator, device=target.device
            )
            neg = (user * items[neg_ids]).sum(-1)
            return F.binary_cross_entropy_with_logits(
                torch.cat([pos, neg]).float(),
                torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float(),
            )
        if self.name == "sampled":
            neg_ids = torch.randint(
                1, self.n_items + 1, (self.n_negatives,), generator=generator, device=target.device
            )
            neg = user @ items[neg_ids].T  # (M, n_negatives)
            neg = neg.masked_fill(neg_ids[None, :] == target[:, None], float("-inf"))
            logits = torch.cat([pos[:, None], neg], dim=1).float()
            return F.cross_entropy(logits, torch.zeros_like(target))
        logits = user @ items[target].T - self.log_q[target][None, :]  # (M, M)
        same = target[:, None] == target[None, :]
        logits = logits.masked_fill(
            same & ~torch.eye(len(target), dtype=torch.bool, device=target.device), float("-inf")
        )
        return F.cross_entropy(logits.float(), torch.arange(len(target), device=target.device))
