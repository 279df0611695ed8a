"""Full-ranking evaluation: every user's target is ranked against ALL items, seen items excluded.

The metric functions are pure (tensors/arrays in, numbers out) and tested on hand-computed
cases; `evaluate_model` applies them to a model on a prepared split; `run(cfg)` is the
`batchrec evaluate` stage and puts the popularity baseline beside the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from batchrec import log, workspace
from batchrec.dataset import PreparedDataset
from batchrec.errors import UserError

PROTOCOL = (
    "full ranking over all {n} items (no sampled negatives); for each user with a {split} target "
    "items[position], the history items[:position] is the input and its items are excluded from the "
    "ranking (the target itself stays rankable); ties broken by lower internal item id; "
    "HR@k and NDCG@k (one relevant item, binary gain) and MRR (uncut) averaged over users; "
    "Coverage@k = distinct items in any top-k / catalogue size"
)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (B,) int64, 1-based
    """Rank of each target in its row; excluded items must already be -inf.

    rank = 1 + #items scoring higher + #items scoring the same with a lower id, so a tie can
    never flatter the model."""
    t = scores.gather(1, targets[:, None])  # (B, 1)
    ids = torch.arange(scores.shape[1], device=scores.device)[None, :]
    ahead = (scores > t) | ((scores == t) & (ids < targets[:, None]))
    return 1 + ahead.sum(dim=1)


def rank_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR@k, NDCG@k for each k and MRR from 1-based target ranks (one relevant item per user)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if ranks.size == 0:
        return out
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    out["MRR"] = float((1.0 / ranks).mean())
    return out


def coverage(topk_items: np.ndarray, n_items: int) -> float:
    """Fraction of the catalogue (items 1..N) appearing in at least one top-k list."""
    return float(len(np.unique(topk_items[topk_items > 0]))) / n_items


def exclude_seen(
    scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, targets: torch.Tensor
) -> None:
    """In place: padding and every (row, item) pair get -inf, except each row's target."""
    keep = scores.gather(1, targets[:, None])
    scores[:, 0] = float("-inf")
    scores[rows, items] = float("-inf")
    scores.scatter_(1, targets[:, None], keep)


def left_padded(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """(B, width) int64: items[starts[b]:ends[b]], cut to the last `width`, left-padded with 0."""
    starts = np.maximum(starts, ends - width)
    lengths = ends - starts
    out = np.zeros((len(starts), width), dtype=np.int64)
    cols = width - lengths
    idx = np.arange(width)[None, :] - cols[:, None] + starts[:, None]  # (B, width)
    valid = np.arange(width)[None, :] >= cols[:, None]
    out[valid] = items[idx[valid]]
    return out


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenated np.arange(starts[i], ends[i]) for all i."""
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


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
        return cls(ds.n_items, items, offsets[rows], offsets[rows] + positions, targets)

    def __len__(self) -> int:
        return len(self.targets)

    def history_items(self) -> np.ndarray:
        """All items of all evaluated histories, flat (what a popularity model may count)."""
        return self.items[ranges(self.starts, self.ends)]


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    data: SplitData,
    ks: list[int],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """HR@k, NDCG@k, MRR and Coverage@k of `model` on a split (model put in eval mode)."""
    was_training = model.training
    model.eval()
    item_vecs = model.item_embeddings().float().to(device)  # (N + 1, d)
    width = int(getattr(model, "max_len", 200))
    ranks, topk = [], []
    kmax = max(ks)
    bar = log.Progress(len(data), desc="evaluate", unit="users", enabled=progress)
    for lo in range(0, len(data), batch_size):
        sl = slice(lo, lo + batch_size)
        starts, ends = data.starts[sl], data.ends[sl]
        seqs = torch.from_numpy(left_padded(data.items, starts, ends, width)).to(device)
        lengths = torch.from_numpy(np.minimum(ends - starts, width)).to(device)
        scores = model.encode(seqs, lengths).float() @ item_vecs.T  # (B, N + 1)
        seen_len = ends - starts
        seen_rows = torch.from_numpy(np.repeat(np.arange(len(starts)), seen_len)).to(device)
        seen_items = torch.from_numpy(data.items[ranges(starts, ends)]).to(device)
        targets = torch.from_numpy(data.targets[sl]).to(device)
        exclude_seen(scores, seen_rows, seen_items, targets)
        ranks.append(target_ranks(scores, targets).cpu().numpy())
        topk.append(scores.topk(min(kmax, scores.shape[1] - 1), dim=1).indices.cpu().numpy())
        bar.update(len(starts))
    bar.close()
    model.train(was_training)
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    out = rank_metrics(all_ranks, ks)
    all_topk = np.concatenate(topk) if topk else np.zeros((0, kmax), dtype=np.int64)
    for k in ks:
        out[f"Coverage@{k}"] = coverage(all_topk[:, :k], data.n_items)
    return out


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None  # default: the workspace's latest checkpoint of `model`
    data: str | None = None  # default: the checkpoint's own data if still there, else the workspace's latest
    model: str = "sasrec"  # only picks the default checkpoint
    split: str = "test"
    ks: list[int] = field(default_factory=lambda: [10, 20])
    batch_size: int = 256
    device: str = "auto"
    workspace: str | None = None

    def validate(self) -> list[str]:
        errs = []
        if self.split not in ("valid", "test"):
            errs.append(f"split: {self.split!r} is not one of 'valid', 'test'")
        if not self.ks or any(k < 1 for k in self.ks):
            errs.append("ks: give one or more k ≥ 1")
        return errs


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a checkpoint and the popularity baseline on one split; returns the report dict."""
    from batchrec import checkpoint, storage
    from batchrec.models.pop import Popularity

    ws = workspace.root(cfg.workspace)
    ckpt = workspace.require_checkpoint(ws, cfg.model, cfg.checkpoint)
    meta = checkpoint.read_meta(ckpt)
    # The dataset the checkpoint was trained on, while it exists, beats the workspace's newest.
    recorded = meta.get("data", {}).get("url")
    if cfg.data is None and recorded and storage.is_published(recorded):
        data_url = recorded
    else:
        data_url = workspace.require_prepared(ws, cfg.data)
    ds = PreparedDataset.open(data_url)
    checkpoint.check_data(meta, ds.metadata["item_map_fingerprint"], ds.n_items, where=ckpt)
    device = resolve_device(cfg.device)
    model, meta = checkpoint.load(ckpt, map_location=device)
    split = SplitData.from_dataset(ds, cfg.split)
    ks = sorted(set(cfg.ks))
    log.get("evaluate").info("evaluating %s on %s (%s, %d users)", ckpt, data_url, cfg.split, len(split))
    metrics = evaluate_model(model, split, ks, batch_size=cfg.batch_size, device=device, progress=True)
    pop = Popularity(ds.n_items).fit(split.history_items()).to(device)
    baseline = evaluate_model(pop, split, ks, batch_size=cfg.batch_size, device=device)
    return {
        "model": meta["model"],
        "checkpoint": ckpt,
        "data": data_url,
        "split": cfg.split,
        "users": len(split),
        "metrics": metrics,
        "baseline": {"model": "pop", "metrics": baseline},
        "protocol": PROTOCOL.format(n=ds.n_items, split=cfg.split),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table: one column per metric, model row and baseline row."""
    keys = list(report["metrics"])
    rows = [(report["model"], report["metrics"]), ("pop", report["baseline"]["metrics"])]
    head = f"{'model':<10}" + "".join(f"{k:>13}" for k in keys)
    lines = [head] + [
        f"{name:<10}" + "".join(f"{m.get(k, math.nan):>13.4f}" for k in keys) for name, m in rows
    ]
    lines.append(f"{report['split']} split, {report['users']} users; {report['protocol']}")
    return "\n".join(lines)
