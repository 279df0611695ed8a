"""BERT4Rec (Sun et al. 2019): bidirectional self-attention trained with cloze masking.

At inference a [MASK] (internal id N + 1, known only inside the model) is appended to the
history and its output vector is the user vector. The output head is GELU projection +
LayerNorm, then tied item embeddings + an item bias; the bias is folded into one extra
dimension, so `encode` returns (B, d + 1) = [h, 1] and `item_embeddings` (N + 1, d + 1) =
[E, bias].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from batchrec.models.base import SeqRecModel
from batchrec.models.layers import Block, Dropout, attention_mask, recency_positions


@dataclass
class BERT4RecConfig:
    dim: int = 64
    n_layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    ffn_mult: int = 4  # FFN hidden size = ffn_mult × dim
    mask_prob: float = 0.2
    replace_80_10_10: bool = False  # of masked positions: 80% [MASK], 10% random item, 10% kept

    def validate(self) -> list[str]:
        errs = [f"{k} must be ≥ 1" for k in ("dim", "n_layers", "heads", "max_len") if getattr(self, k) < 1]
        if self.dim % max(self.heads, 1):
            errs.append(f"dim {self.dim} must be divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            errs.append("dropout must be in [0, 1)")
        if not 0 < self.mask_prob < 1:
            errs.append("mask_prob must be in (0, 1)")
        return errs


class BERT4Rec(SeqRecModel):
    name = "bert4rec"
    Config = BERT4RecConfig
    causal = False
    # cloze training predicts ~mask_prob of the positions per epoch, so it improves more slowly
    patience = 40
    item_tables = ("item_emb.weight", "item_bias")

    def __init__(self, n_items: int, config: BERT4RecConfig | None = None):
        super().__init__()
        self.config = c = config or BERT4RecConfig()
        self.n_items = n_items
        self.mask_id = n_items + 1
        self.item_emb = nn.Embedding(n_items + 2, c.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.drop = Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.heads, c.dropout, ffn_mult=c.ffn_mult) for _ in range(c.n_layers)
        )
        self.ln = nn.LayerNorm(c.dim)
        self.head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.LayerNorm(c.dim))
        self.item_bias = nn.Parameter(torch.zeros(n_items + 2))
        nn.init.normal_(self.item_emb.weight, std=c.dim**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def training_defaults(self, loss: str) -> dict[str, Any]:
        # SASRec-CE's peak 5e-3 and cosine, over 60 epochs: on ML-100K the best checkpoint comes at
        # epoch 41-44 with 0.0954-0.0977 test NDCG@10 (3 seeds), where 200 constant-2e-3 epochs gave
        # 0.0904-0.0978 at epoch 38-75 (BENCHMARKS.md, issue 17).
        if loss == "ce":
            return {"epochs": 60, "lr": 5e-3, "lr_schedule": "cosine"}
        return super().training_defaults(loss)

    def sequence_vectors(
        self, item_seqs: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:  # (B, T, d + 1)
        """Output vectors at every position of a (possibly masked) sequence, bias dimension included."""
        item_seqs = item_seqs[:, -self.config.max_len :]
        x = self.item_emb(item_seqs) + self.pos_emb(recency_positions(item_seqs.shape[1], item_seqs.device))
        x = self.drop(x * (item_seqs > 0).unsqueeze(-1))
        mask = attention_mask(item_seqs, causal=False)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only and i == len(self.blocks) - 1)
        h = self.head(self.ln(x))
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

    def mask_items(self, item_seqs: torch.Tensor, generator: torch.Generator | None = None):
        """Cloze masking: (masked inputs, labels with 0 where nothing is predicted).

        Each real item is masked with `mask_prob`; a sequence with none masked gets its last
        item masked, which is also the inference situation; a sequence of two or more items with
        all masked gets its first item back, since a target needs some input to be predicted from."""
        c = self.config
        real = item_seqs > 0
        u = torch.rand(item_seqs.shape, generator=generator, device=item_seqs.device)
        chosen = real & (u < c.mask_prob)
        none = ~chosen.any(dim=1)
        chosen[:, -1] |= none & real[:, -1]
        every = (chosen == real).all(dim=1) & (real.sum(dim=1) >= 2)
        first = real.to(torch.int8).argmax(dim=1)  # left padding: the first real column
        chosen[every, first[every]] = False
        labels = torch.where(chosen, item_seqs, torch.zeros_like(item_seqs))
        inputs = item_seqs.clone()
        if c.replace_80_10_10:
            r = torch.rand(item_seqs.shape, generator=generator, device=item_seqs.device)
            rand_items = torch.randint(
                1, self.n_items + 1, item_seqs.shape, generator=generator, device=item_seqs.device
            )
            inputs = torch.where(chosen & (r < 0.8), torch.full_like(inputs, self.mask_id), inputs)
            inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_items, inputs)
        else:
            inputs = torch.where(chosen, torch.full_like(inputs, self.mask_id), inputs)
        return inputs, labels

    def encode(self, item_seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, d + 1)
        masked = torch.full_like(item_seqs[:, :1], self.mask_id)
        return self.sequence_vectors(torch.cat([item_seqs, masked], dim=1), last_only=True)[:, -1]

    def item_embeddings(self) -> torch.Tensor:  # (N + 1, d + 1)
        n = self.n_items + 1
        return torch.cat([self.item_emb.weight[:n], self.item_bias[:n, None]], dim=-1)
