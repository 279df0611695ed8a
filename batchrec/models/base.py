"""The interface every model shares, so training, scoring, export and FAISS never name a model.

Inference (every model):
- `encode(item_seqs, lengths) -> (B, d)`: one vector per user from its history. `item_seqs` is
  (B, T) int64, LEFT-padded with 0, the most recent item in the last column; `lengths` (B,)
  counts the real items (≤ T).
- `item_embeddings() -> (N + 1, d)`: one vector per internal item id; row 0 is padding.
- score(u, i) = ⟨encode(u), item_embeddings()[i]⟩. A model with an output bias folds it into
  one extra dimension (user vector gets a 1, item vector gets the bias), so `d` here is the
  exported dimension.

Training (what `batchrec.train` asks of a model, and nothing else):
- `fit(train_items)`: a model trained without gradients (popularity) is fit here, once;
  gradient-trained models leave it alone (`trained_by_gradient`).
- `train_batch(windows, generator) -> (pick, vectors, targets)`: the positions of a (B, T)
  batch of training windows trained on, the model's vector at each and the item each predicts.
  The default is next-item prediction (`causal`); a cloze model overrides `mask_items`.
- `window()`: (width, overlap) of the training windows cut from each history.
- `patience`: evaluations without a better validation score before training stops.
- `training_defaults(loss)`: the epochs, learning rate and schedule a run gets unless it sets them.
- `item_tables`: state-dict entries with one row per internal item id (a warm start maps
  them by external id).

Each model module defines a config dataclass and a class with `Config` and `name` attributes
and a constructor `Model(n_items, config)`, registered by name in `batchrec.models.MODELS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class SeqRecModel(nn.Module):
    name: str = "base"
    Config: type
    causal: bool = True  # next-item prediction; False: cloze (masked items), see `mask_items`
    trained_by_gradient: bool = True
    patience: int = 8
    item_tables: tuple[str, ...] = ()

    def encode(self, item_seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, d)
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:  # (N + 1, d)
        raise NotImplementedError

    def sequence_vectors(self, item_seqs: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        """The model's vector at every position of a (B, T) batch (what training scores)."""
        raise NotImplementedError

    def mask_items(self, item_seqs: torch.Tensor, generator: torch.Generator | None = None):
        """Cloze models: (masked inputs, labels with 0 where nothing is predicted)."""
        raise NotImplementedError

    def training_defaults(self, loss: str) -> dict[str, Any]:
        """`epochs`, `lr` and `lr_schedule` of a run that does not set them."""
        return {"epochs": 200, "lr": 2e-3, "lr_schedule": "constant"}

    def fit(self, train_items: np.ndarray) -> SeqRecModel:
        """Models trained without gradients are fit on the flat array of training events here."""
        return self

    @property
    def max_len(self) -> int:
        """Longest history `encode` looks at; longer histories are cut to their last `max_len` items."""
        return int(getattr(self.config, "max_len", 200))

    def window(self) -> tuple[int, int]:
        """(width, overlap) of training windows: causally, max_len inputs + the next item, and
        consecutive windows share one item (the last target of one is the first input of the next)."""
        return (self.max_len + 1, 1) if self.causal else (self.max_len, 0)

    def train_batch(self, windows: torch.Tensor, generator: torch.Generator | None = None):
        """(pick, vectors, targets): positions trained on (B, T') bool, the vectors there, targets.

        A target needs an input: causally, a real item before it (a user's first item follows only
        padding); under cloze masking `mask_items` always leaves one item of a window unmasked."""
        if self.causal:
            inputs, targets = windows[:, :-1], windows[:, 1:]
            return (targets > 0) & (inputs > 0), self.sequence_vectors(inputs), targets
        inputs, targets = self.mask_items(windows, generator)
        return targets > 0, self.sequence_vectors(inputs), targets
