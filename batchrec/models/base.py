"""The interface every model shares, so scoring, export and FAISS never special-case a model.

- `encode(item_seqs, lengths) -> (B, d)`: one vector per user from its history. `item_seqs` is
  (B, T) int64, LEFT-padded with 0, the most recent item in the last column; `lengths` (B,)
  counts the real items (≤ T).
- `item_embeddings() -> (N + 1, d)`: one vector per internal item id; row 0 is padding.
- score(u, i) = ⟨encode(u), item_embeddings()[i]⟩. A model with an output bias folds it into
  one extra dimension (user vector gets a 1, item vector gets the bias), so `d` here is the
  exported dimension.

Each model module defines a config dataclass and a class with `Config` and `name` attributes
and a constructor `Model(n_items, config)`.
"""

from __future__ import annotations

import torch
from torch import nn


class SeqRecModel(nn.Module):
    name: str = "base"
    Config: type

    def encode(self, item_seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, d)
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:  # (N + 1, d)
        raise NotImplementedError

    @property
    def max_len(self) -> int:
        """Longest history `encode` looks at; longer histories are cut to their last `max_len` items."""
        return int(getattr(self.config, "max_len", 200))
