"""Full-ranking evaluation: every user's target is ranked against ALL items, under the
seen-item policy that scoring uses too.

The metrics and the policy live in `batchrec.ranking`; `evaluate_model` applies them to a model
on a prepared split; `run(cfg)` is the `batchrec evaluate` stage and puts the popularity
baseline, fit on the training events, beside the model.
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
from batchrec.ranking import (
    DEFAULT_SEEN_POLICY,
    TIE_RULE,
    check_seen_policy,
    coverage,
    describe_seen_policy,
    mask_seen,
    rank_metrics,
    seen_policy,
    target_ranks,
)

PROTOCOL = (
    "full ranking over all {n} items (no sampled negatives); for each user with a {split} target "
    "items[position], the history items[:position] is the input; {policy}; {ties} "
    "(rank = 1 + items scoring higher + other items scoring the same); "
    "HR@k and NDCG@k (one relevant item, binary gain) and MRR (uncut) averaged over users; "
    "Coverage@k = distinct items in any top-k / catalogue size; "
    "popularity baseline = counts of the training events"
)


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


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    data: SplitData,
    ks: list[int],
    *,
    policy: str = DEFAULT_SEEN_POLICY,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """HR@k, NDCG@k, MRR and Coverage@k of `model` on a split under seen-item `policy`."""
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
        mask_seen(scores, seen_rows, seen_items, policy)
        ranks.append(target_ranks(scores, targets).cpu().numpy())
        top = scores.topk(min(kmax, scores.shape[1] - 1), dim=1)
        # a masked slot is no recommendation (a published list is shorter there), and a user with
        # no history item the model knows gets no list at all
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


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None  # default: the workspace's latest checkpoint of `model`
    data: str | None = None  # default: the checkpoint's own data if still there, else the workspace's latest
    model: str = "sasrec"  # only picks the default checkpoint
    split: str = "test"
    ks: list[int] = field(default_factory=lambda: [10, 20])
    batch_size: int = 256
    device: str = "auto"
    exclude_seen: str | None = None  # history | none; default: the checkpoint's training policy
    workspace: str | None = None

    def validate(self) -> list[str]:
        errs = check_seen_policy(self.exclude_seen) if self.exclude_seen is not None else []
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
    vocab = checkpoint.vocabulary(ckpt, meta, ds.item_map, ds.metadata["item_map_fingerprint"])
    device = resolve_device(cfg.device)
    model, meta = checkpoint.load(ckpt, map_location=device)
    split = SplitData.from_dataset(ds, cfg.split)
    train_items = ds.train_items()
    if not vocab.identity:
        log.get("evaluate").info(
            "the data has %d items, %d known to the model: histories keep the known ones, "
            "an unknown target is a miss", vocab.data_items, vocab.known,
        )  # fmt: skip
        split, train_items = split.translated(vocab), vocab.translate(train_items)
    ks = sorted(set(cfg.ks))
    policy = seen_policy(cfg.exclude_seen, meta.get("train_config"))
    log.get("evaluate").info(
        "evaluating %s on %s (%s, %d users, exclude_seen=%s)", ckpt, data_url, cfg.split, len(split), policy
    )
    opts = dict(policy=policy, batch_size=cfg.batch_size, device=device)
    metrics = evaluate_model(model, split, ks, progress=True, **opts)
    pop = Popularity(split.n_items).fit(train_items).to(device)
    baseline = evaluate_model(pop, split, ks, **opts)
    return {
        "model": meta["model"],
        "checkpoint": ckpt,
        "data": data_url,
        "split": cfg.split,
        "users": len(split),
        "exclude_seen": policy,
        "metrics": metrics,
        "baseline": {"model": "pop", "metrics": baseline},
        "protocol": PROTOCOL.format(
            n=ds.n_items, split=cfg.split, policy=describe_seen_policy(policy), ties=TIE_RULE
        ),
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
