"""Rank metrics and the seen-item policy: what training validation, `evaluate`, the quality
gate and `score` share, so an evaluation measures exactly what the published lists can reach.

Seen-item policies (`exclude_seen`):
- `history` (default): every item of the input history is masked, the target included, so a
  target that repeats a history item is a miss — it can never appear in a published list.
- `none`: nothing is masked (repeat consumption is legitimate: music, groceries).
Padding (column 0) is always masked.

Ties count against the model: rank = 1 + #items scoring higher + #other items scoring the same.

Pure functions (arrays or tensors in, numbers out); torch is imported only where tensors are used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEEN_POLICIES = ("history", "none")
DEFAULT_SEEN_POLICY = "history"
TIE_RULE = "a tie between the target and another item counts against the model"


def check_seen_policy(value: Any) -> list[str]:
    """Config validation errors for an `exclude_seen` value (empty when valid)."""
    if value in SEEN_POLICIES:
        return []
    return [f"exclude_seen: {value!r} is not one of {', '.join(repr(p) for p in SEEN_POLICIES)}"]


def seen_policy(explicit: str | None, train_config: dict[str, Any] | None) -> str:
    """The policy a stage uses: its own setting, else the checkpoint's training config's, else
    the default (checkpoints written before the policy existed masked the history)."""
    return explicit or (train_config or {}).get("exclude_seen") or DEFAULT_SEEN_POLICY


def describe_seen_policy(policy: str) -> str:
    """One sentence for reports and manifests."""
    if policy == "history":
        return (
            "exclude_seen=history: every item of the input history is excluded from the ranking, the "
            "target included, so a target repeating a history item is a miss (as in the published lists)"
        )
    return "exclude_seen=none: no history item is excluded (repeat consumption is allowed, as in the published lists)"


def mask_seen(scores, rows, items, policy: str) -> None:
    """In place on (B, N + 1) scores: padding always -inf; under `history` every (rows[j], items[j])
    history pair too — including a row's target when the history holds it."""
    scores[:, 0] = float("-inf")
    if policy == "history":
        scores[rows, items] = float("-inf")


def target_ranks(scores, targets):  # (B,) float64, 1-based; +inf where the target is masked
    """Rank of each target in its row; masked items must already be -inf.

    rank = 1 + #items scoring higher + #other items scoring the same, so a tie never flatters
    the model (or a low item id). A masked target has no rank (+inf): a miss at every k."""
    import torch

    t = scores.gather(1, targets[:, None])  # (B, 1)
    ahead = (scores > t).sum(dim=1) + (scores == t).sum(dim=1) - 1
    ranks = (1 + ahead).to(torch.float64)
    return torch.where(torch.isneginf(t[:, 0]), torch.full_like(ranks, float("inf")), ranks)


def rank_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR@k, NDCG@k for each k and MRR from 1-based target ranks (one relevant item per user;
    an infinite rank is a miss)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if ranks.size == 0:
        return out
    for k in ks:
        hit = ranks <= k
        gain = 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0)
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, gain, 0.0).mean())
    out["MRR"] = float((1.0 / ranks).mean())
    return out


def coverage(topk_items: np.ndarray, n_items: int) -> float:
    """Fraction of the catalogue (items 1..N) appearing in at least one top-k list (0 = empty slot)."""
    return float(len(np.unique(topk_items[topk_items > 0]))) / n_items
