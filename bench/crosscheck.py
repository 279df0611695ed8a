"""Does `batchrec evaluate` report what `batchrec score` publishes? An independent recomputation.

    python bench/crosscheck.py --checkpoint CKPT --data DATA [--split test] [--k 10]

For every evaluation target, the history before it goes through the `Scorer` (the very code the
scoring actors run, under the checkpoint's seen-item policy); HR@k and NDCG@k are recomputed from
the target's place in that top-k list and printed beside `evaluate`'s own figures.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from batchrec import checkpoint, evaluate, ranking
from batchrec.dataset import PreparedDataset
from batchrec.scorer import Scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    policy = ranking.seen_policy(None, checkpoint.read_meta(args.checkpoint).get("train_config"))
    prepared = PreparedDataset.open(args.data)
    _, offsets, items, _ = prepared.flat_sequences()
    rows, positions, targets = prepared.split_targets(args.split)
    histories = [items[offsets[r] : offsets[r] + p] for r, p in zip(rows, positions, strict=True)]
    scorer = Scorer(args.checkpoint, k=args.k, exclude_seen=policy)
    ranks = []
    for lo in range(0, len(histories), 4096):
        chunk = histories[lo : lo + 4096]
        lists = scorer({"user_idx": np.arange(len(chunk)), "items": chunk})["topk_items"].tolist()
        ranks += [
            row.index(t) + 1 if t in row else np.inf for row, t in zip(lists, targets[lo:], strict=False)
        ]
    ranks = np.array(ranks)
    hit = ranks <= args.k
    recomputed = {
        f"HR@{args.k}": float(hit.mean()),
        f"NDCG@{args.k}": float(np.where(hit, 1 / np.log2(np.where(hit, ranks, 1) + 1), 0).mean()),
    }
    report = evaluate.run(
        evaluate.EvaluateConfig(checkpoint=args.checkpoint, data=args.data, split=args.split, ks=[args.k])
    )
    reported = {key: report["metrics"][key] for key in recomputed}
    repeats = float(np.mean([t in h for t, h in zip(targets, histories, strict=True)]))
    print(
        json.dumps(
            {
                "split": args.split,
                "targets": len(targets),
                "repeat_targets": round(repeats, 4),
                "exclude_seen": policy,
                "evaluate": reported,
                "recomputed_from_lists": recomputed,
                "max_abs_diff": max(abs(reported[k] - recomputed[k]) for k in recomputed),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
