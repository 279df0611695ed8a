"""GRU4Rec (Hidasi et al. 2016) trained with full-softmax CE (as in Hidasi & Czapp 2023):
a GRU over the history, tied item embeddings as the output layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from batchrec.models.base import SeqRecModel


@dataclass
class GRU4RecConfig:
    dim: int = 64
    n_layers: int = 1
    dropout: float = 0.2
    max_len: int = 50

    def validate(self) -> list[str]:
        errs = [f"{k} must be ≥ 1" for k in ("dim", "n_layers", "max_len") if getattr(self, k) < 1]
        if not 0 <= self.dropout < 1:
            errs.append("dropout must be in [0, 1)")
        return errs


class GRU4Rec(SeqRecModel):
    name = "gru4rec"
    Config = GRU4RecConfig
    causal = True
    item_tables = ("item_emb.weight",)

    def __init__(self, n_items: int, config: GRU4RecConfig | None = None):
        super().__init__()
        self.config = c = config or GRU4RecConfig()
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 1, c.dim, padding_idx=0)
        self.drop = nn.Dropout(c.dropout)
        self.gru = nn.GRU(c.dim, c.dim, num_layers=c.n_layers, batch_first=True)
        self.out = nn.Linear(c.dim, c.dim)
        nn.init.normal_(self.item_emb.weight, std=c.dim**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def sequence_vectors(self, item_seqs: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        # Left padding: the GRU reads the zero padding vectors first; their effect on the state is
        # small and learned, which keeps the batch layout the same as the transformers'.
        item_seqs = item_seqs[:, -self.config.max_len :]
        h, _ = self.gru(self.drop(self.item_emb(item_seqs)))
        return self.out(self.drop(h))

    def encode(self, item_seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, d)
        return self.sequence_vectors(item_seqs)[:, -1]

    def item_embeddings(self) -> torch.Tensor:  # (N + 1, d)
        return self.item_emb.weight
