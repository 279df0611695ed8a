"""Popularity baseline: every user gets the most-interacted items of the training data.

In the shared interface the user vector is the constant [1] and each item's vector is its
training count, so ⟨user, item⟩ ranks by popularity; seen items are excluded by the scorer
like for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from batchrec.models.base import SeqRecModel


@dataclass
class PopConfig:
    max_len: int = 1


class Popularity(SeqRecModel):
    name = "pop"
    Config = PopConfig
    trained_by_gradient = False

    def __init__(self, n_items: int, config: PopConfig | None = None):
        super().__init__()
        self.config = config or PopConfig()
        self.n_items = n_items
        self.register_buffer("counts", torch.zeros(n_items + 1, dtype=torch.float32))

    def fit(self, train_items: np.ndarray) -> Popularity:
        """Count each internal item id in the training events (`train_items`: flat int array)."""
        counts = np.bincount(np.asarray(train_items, dtype=np.int64), minlength=self.n_items + 1)
        self.counts.copy_(torch.from_numpy(counts[: self.n_items + 1].astype(np.float32)))
        self.counts[0] = 0
        return self

    def encode(self, item_seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, 1)
        return torch.ones(item_seqs.shape[0], 1, device=self.counts.device)

    def item_embeddings(self) -> torch.Tensor:  # (N + 1, 1)
        return self.counts[:, None]
