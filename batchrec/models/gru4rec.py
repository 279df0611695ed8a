"""GRU4Rec (Hidasi et al. 2016) trained with full-softmax CE (as in Hidasi & Czapp 2023):
a GRU over the history, tied item embeddings as the output layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from batchrec.models.base import SeqRecModel
from batchrec.models.layers import Dropout


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
        self.drop = Dropout(c.dropout)
        self.gru = nn.GRU(c.dim, c.dim, num_layers=c.n_layers, batch_first=True)
        self.out = nn.Linear(c.dim, c.dim)
        nn.init.normal_(self.item_emb.weight, std=c.dim**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _right_aligned(self, item_seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU outputs over each history moved to the front of its row: ((B, T, d), lengths (B,)).

        A GRU reading left padding carries it in its state, so a user vector would depend on how
        much padding the batch gave its row. Rolled left, the real items come first and the
        padding after them can no longer reach their outputs."""
        item_seqs = item_seqs[:, -self.config.max_len :]
        lengths = (item_seqs > 0).sum(dim=1)  # left padding: the real items are the last `lengths`
        width = item_seqs.shape[1]
        cols = torch.arange(width, device=item_seqs.device)
        right = item_seqs.gather(1, (cols[None, :] - lengths[:, None]) % width)
        h, _ = self.gru(self.drop(self.item_emb(right)))
        return self.out(self.drop(h)), lengths

    def sequence_vectors(self, item_seqs: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        """The user vector after each prefix, in the input's left-padded layout (column t has seen
        items[:t+1] only; columns of padding hold no meaningful vector)."""
        h, lengths = self._right_aligned(item_seqs)
        width = h.shape[1]
        cols = torch.arange(width, device=h.device)
        back = ((cols[None, :] + lengths[:, None]) % width)[..., None].expand_as(h)
        return h.gather(1, back)

    def encode(self, item_seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, d)
        h, n = self._right_aligned(item_seqs)
        last = (n - 1).clamp(min=0)[:, None, None].expand(-1, 1, h.shape[2])
        return h.gather(1, last)[:, 0]

    def item_embeddings(self) -> torch.Tensor:  # (N + 1, d)
        return self.item_emb.weight
