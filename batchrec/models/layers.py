"""Shared transformer pieces for SASRec and BERT4Rec: a pre-LN block and the attention masks.

Sequences are LEFT-padded, so position embeddings count back from the most recent item
(column T-1 → position 0): a history means the same thing whatever the padding in its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """x + attn(ln(x)), then x + ffn(ln(x)); `mask` (B, 1, T, T) bool, True = may attend.

    Dropout acts on the residual branches and inside the FFN, not on attention weights: on CPU
    a (B, H, T, T) dropout mask costs as much as the rest of the block."""

    def __init__(self, dim: int, heads: int, dropout: float, ffn_mult: int = 4, activation: str = "gelu"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim), act, Dropout(dropout), nn.Linear(ffn_mult * dim, dim)
        )
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, d), or (B, 1, d) for the last position only when `last_only`: inference wants
        one vector per user, so the last block needs every position's keys and values but only
        the last position's query, attention and FFN (about 40 % of a 2-block encoder's work)."""
        b, t, d = x.shape
        h = self.ln1(x)
        if last_only:
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(h[:, -1:], w[:d], bias[:d]).view(b, 1, self.heads, d // self.heads).transpose(1, 2)
            k, v = (
                F.linear(h, w[d:], bias[d:]).view(b, t, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            )
            x, mask, t = x[:, -1:], mask[:, :, -1:], 1
        else:
            q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, d/H)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


class Dropout(nn.Module):
    """nn.Dropout, with a mask 10× cheaper to draw on CPU.

    CPU `bernoulli_` draws one 32-bit number per element (≈ 7 ms for a 128 × 50 × 64 batch, a
    quarter of a SASRec step); here each 64-bit draw gives four 16-bit lanes, so `p` is rounded to
    a multiple of 1/65536 and kept values are scaled by 1 / (1 − that p), keeping the expectation
    exact. Other devices keep `F.dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.cut = round(p * 65536) - 32768  # a lane below it drops its element
        self.scale = 65536 / (65536 - round(p * 65536))  # the models' configs keep p < 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64)
        keep = draws.view(torch.int16)[:n].view(x.shape) >= self.cut
        return x * keep * self.scale


def attention_mask(item_seqs: torch.Tensor, causal: bool) -> torch.Tensor:  # (B, 1, T, T)
    """Real items attend to real items (earlier ones only if `causal`); padding attends to itself,
    which keeps every row of the softmax non-empty and never leaks into a real position."""
    t = item_seqs.shape[1]
    real = item_seqs > 0
    allowed = real[:, None, :].expand(-1, t, -1)
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=item_seqs.device).tril()
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=item_seqs.device)
    return allowed[:, None]


def recency_positions(t: int, device: torch.device) -> torch.Tensor:  # (T,)
    return torch.arange(t - 1, -1, -1, device=device)
