"""Full-ranking evaluation: every user's target is ranked against ALL items, under the
seen-item policy that scoring uses too.

The split, the metrics and the policy live in `batchrec.ranking` (training validates with the
same code); `run(cfg)` is the `batchrec evaluate` stage and puts the popularity baseline, fit on
the training events, beside the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from batchrec import distributed, log, workspace
from batchrec.distributed import Device
from batchrec.ranking import (
    TIE_RULE,
    SeenPolicy,
    SplitData,
    describe_seen_policy,
    evaluate_model,
    seen_policy,
)

CURVE_K = 50  # the evaluation report also holds HR@k and NDCG@k for every k up to this
_log = log.get("evaluate")

PROTOCOL = (
    "full ranking over all {n} items (no sampled negatives); for each user with a {split} target "
    "items[position], the history items[:position] is the input; {policy}; {ties} "
    "(rank = 1 + items scoring higher + other items scoring the same); "
    "HR@k and NDCG@k (one relevant item, binary gain) and MRR (uncut) averaged over users; "
    "Coverage@k = distinct items in any top-k / catalogue size; "
    "popularity baseline = counts of the training events"
)


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None  # default: the workspace's latest checkpoint of `model`
    data: str | None = None  # default: the checkpoint's own data if still there, else the workspace's latest
    model: str = "sasrec"  # whose latest checkpoint is the default
    split: Literal["test", "valid"] = "test"  # the targets evaluated on
    ks: list[int] = field(default_factory=lambda: [10, 20])  # cutoffs (repeat the flag for several)
    batch_size: int = 256  # users per scoring batch
    device: Device = "auto"  # auto: CUDA when visible
    # history: mask every history item, a repeated target is a miss | none.
    # Default: the checkpoint's training policy.
    exclude_seen: SeenPolicy | None = None
    workspace: str | None = None  # workspace for default locations

    def validate(self) -> list[str]:
        errs = []
        if not self.ks or any(k < 1 for k in self.ks):
            errs.append("ks: give one or more k ≥ 1")
        return errs


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a checkpoint and the popularity baseline on one split; returns the report dict."""
    from batchrec import checkpoint, storage
    from batchrec.dataset import PreparedDataset
    from batchrec.models import build

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
    device = distributed.device(cfg.device)
    model, meta = checkpoint.load(ckpt, map_location=device)
    split = SplitData.from_dataset(ds, cfg.split)
    train_items = ds.train_items()
    if not vocab.identity:
        _log.info(
            "the data has %d items, %d known to the model: histories keep the known ones, "
            "an unknown target is a miss", vocab.data_items, vocab.known,
        )  # fmt: skip
        split, train_items = split.translated(vocab), vocab.translate(train_items)
    ks = sorted(set(cfg.ks))
    policy = seen_policy(cfg.exclude_seen, meta.get("train_config"))
    _log.info(
        "evaluating %s on %s (%s, %d users, exclude_seen=%s)", ckpt, data_url, cfg.split, len(split), policy
    )
    opts = dict(policy=policy, batch_size=cfg.batch_size, device=device)
    # every k up to CURVE_K as well, from the same ranks: the report's HR@k / NDCG@k curves
    every = sorted(set(ks) | set(range(1, CURVE_K + 1)))
    metrics = evaluate_model(model, split, every, progress=True, **opts)
    pop = build("pop", split.n_items).fit(train_items).to(device)
    baseline = evaluate_model(pop, split, every, **opts)
    curves = {"k": list(range(1, CURVE_K + 1))}
    for name, m in (("model", metrics), ("pop", baseline)):
        curves[name] = {f: [m[f"{f}@{k}"] for k in curves["k"]] for f in ("HR", "NDCG")}
    metrics, baseline = _at(metrics, ks), _at(baseline, ks)
    return {
        "model": meta["model"],
        "checkpoint": ckpt,
        "data": data_url,
        "split": cfg.split,
        "users": len(split),
        "exclude_seen": policy,
        "metrics": metrics,
        "baseline": {"model": "pop", "metrics": baseline},
        "curves": curves,
        "protocol": PROTOCOL.format(
            n=ds.n_items, split=cfg.split, policy=describe_seen_policy(policy), ties=TIE_RULE
        ),
    }


def _at(metrics: dict[str, float], ks: list[int]) -> dict[str, float]:
    """The metrics at the asked cutoffs only (MRR has none)."""
    return {name: v for name, v in metrics.items() if "@" not in name or int(name.split("@")[1]) in ks}


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
