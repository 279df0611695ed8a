"""MovieLens-100K → prepared dataset, the protocol of the issue-3 quality bars.

Leave-one-out (last = test, second-last = valid), no k-core (943 users, 1,682 items), each
user's events sorted by timestamp with a STABLE sort so ties keep file order, dense item ids
by first appearance in that order. Shared by bench/bench_train.py and the data-marked tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa


def prepare_ml100k(u_data: Path | str, out: str) -> str:
    from batchrec.dataset import write_prepared

    raw = np.loadtxt(u_data, dtype=np.int64, delimiter="\t")
    user, item, ts = raw[:, 0], raw[:, 1], raw[:, 3]
    order = np.lexsort((ts, user))  # lexsort is stable: ties in (user, ts) keep file order
    user, item, ts = user[order], item[order], ts[order]
    ext_items, first = np.unique(item, return_index=True)
    by_first = ext_items[np.argsort(first, kind="stable")]
    internal = np.empty(by_first.max() + 1, dtype=np.int64)
    internal[by_first] = np.arange(1, len(by_first) + 1)
    items = internal[item]
    users, starts = np.unique(user, return_index=True)
    ends = np.append(starts[1:], len(user))
    seqs, targets = [], []
    for u, (s, e) in enumerate(zip(starts, ends, strict=True)):
        n = int(e - s)
        seqs.append(
            {"user_idx": u, "items": items[s:e].tolist(), "timestamps": ts[s:e].tolist(), "train_len": n - 2}
        )
        targets.append(
            {"user_idx": u, "split": "valid", "position": n - 2, "item_idx": int(items[s + n - 2])}
        )
        targets.append({"user_idx": u, "split": "test", "position": n - 1, "item_idx": int(items[s + n - 1])})
    return write_prepared(
        out,
        item_ids=pa.array(by_first),
        user_ids=pa.array(users),
        sequences=pa.Table.from_pylist(seqs),
        targets=pa.Table.from_pylist(targets),
        source=str(u_data),
        params={"split": "loo", "k_core": None, "ties": "file order"},
        stats={"users": len(users), "items": len(by_first), "interactions": len(items)},
        overwrite=True,
    )
