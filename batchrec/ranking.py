"""Full-ranking quality: the split, the metrics and the seen-item policy that training validation,
`evaluate`, the quality gate and `score` share, so an evaluation measures exactly what the
published lists can reach.

Seen-item policies (`exclude_seen`):
- `history` (default): every item of the input history is masked, the target included, so a
  target that repeats a history item is a miss — it can never appear in a published list.
- `none`: nothing is masked (repeat consumption is legitimate: music, groceries).
Padding (column 0) is always masked.

Ties count against the model: rank = 1 + #items scoring higher + #other items scoring the same.

`SplitData` holds one split's histories and targets as flat arrays; `evaluate_model` ranks a
model's scores for them. torch is imported only where tensors are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from batchrec import log
from batchrec.batching import left_padded, ranges
from batchrec.errors import UserError

if TYPE_CHECKING:
    from batchrec.dataset import PreparedDataset

SeenPolicy = Literal["history", "none"]
SEEN_POLICIES = get_args(SeenPolicy)
DEFAULT_SEEN_POLICY = "history"
TIE_RULE = "a tie between the target and another item counts against the model"


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


@dataclass
class SplitData:
    """What evaluating one split needs, as flat arrays (built once, reused every epoch)."""

    n_items: int
    items: np.ndarray  # all users' histories, concatenated
    starts: np.ndarray  # (U,) where each evaluated user's history starts in `items`
    ends: np.ndarray  # (U,) history end = start + target position
    targets: np.ndarray  # (U,) target internal item ids

    @classmethod
    def from_dataset(cls, ds: PreparedDataset, split: str, max_users: int | None = None, seed: int = 0):
        _, offsets, items, _ = ds.flat_sequences()
        rows, positions, targets = ds.split_targets(split)
        if len(rows) == 0:
            raise UserError(
                f"the dataset has no {split!r} targets", where=ds.url, fix="use --split test or valid"
            )
        if max_users and len(rows) > max_users:
            pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_users, replace=False))
            rows, positions, targets = rows[pick], positions[pick], targets[pick]
        # only the evaluated users' histories are kept: a few MB even when the dataset has millions
        starts, ends = offsets[rows], offsets[rows] + positions
        kept = np.concatenate([[0], np.cumsum(ends - starts)])
        return cls(ds.n_items, items[ranges(starts, ends)], kept[:-1], kept[1:], targets)

    def __len__(self) -> int:
        return len(self.targets)

    def translated(self, vocab) -> SplitData:
        """The split in a checkpoint's item ids (`checkpoint.Vocabulary`), as `score` sees it:
        unknown items dropped from histories; a target the model does not know, or a user left
        with no known item (who gets no published list), is a miss."""
        mapped = vocab.to_model[self.items]
        known = mapped > 0
        new_pos = np.concatenate([[0], np.cumsum(known)])  # position in the kept items
        starts, ends = new_pos[self.starts], new_pos[self.ends]
        targets = np.where(ends > starts, vocab.to_model[self.targets], 0)  # 0 = padding: never ranked
        return SplitData(len(vocab.items), mapped[known], starts, ends, targets)


def evaluate_model(
    model,
    data: SplitData,
    ks: list[int],
    *,
    policy: str = DEFAULT_SEEN_POLICY,
    batch_size: int = 256,
    device="cpu",
    progress: bool = False,
) -> dict[str, float]:
    """HR@k, NDCG@k, MRR and Coverage@k of `model` (a `SeqRecModel`) on a split under `policy`."""
    import torch

    was_training = model.training
    model.eval()
    ranks, topk = [], []
    kmax = max(ks)
    bar = log.Progress(len(data), desc="evaluate", unit="users", enabled=progress)
    with torch.no_grad():
        item_vecs = model.item_embeddings().float().to(device)  # (N + 1, d)
        for lo in range(0, len(data), batch_size):
            sl = slice(lo, lo + batch_size)
            starts, ends = data.starts[sl], data.ends[sl]
            seqs = torch.from_numpy(left_padded(data.items, starts, ends, model.max_len)).to(device)
            lengths = torch.from_numpy(np.minimum(ends - starts, model.max_len)).to(device)
            scores = model.encode(seqs, lengths).float() @ item_vecs.T  # (B, N + 1)
            seen_len = ends - starts
            seen_rows = torch.from_numpy(np.repeat(np.arange(len(starts)), seen_len)).to(device)
            seen_items = torch.from_numpy(data.items[ranges(starts, ends)]).to(device)
            targets = torch.from_numpy(data.targets[sl]).to(device)
            mask_seen(scores, seen_rows, seen_items, policy)
            ranks.append(target_ranks(scores, targets).cpu().numpy())
            top = scores.topk(min(kmax, scores.shape[1] - 1), dim=1)
            # a masked slot is no recommendation (a published list is shorter there), and a user
            # with no history item the model knows gets no list at all
            none = torch.from_numpy(seen_len == 0).to(device)[:, None]
            topk.append(top.indices.masked_fill(torch.isneginf(top.values) | none, 0).cpu().numpy())
            bar.update(len(starts))
    bar.close()
    model.train(was_training)
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    out = rank_metrics(all_ranks, ks)
    all_topk = np.concatenate(topk) if topk else np.zeros((0, kmax), dtype=np.int64)
    for k in ks:
        out[f"Coverage@{k}"] = coverage(all_topk[:, :k], data.n_items)
    return out
