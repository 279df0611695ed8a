"""Statistics of a raw interaction log (any readable format) or of a prepared dataset."""

from __future__ import annotations

from typing import Any

import numpy as np

from batchrec import schema, storage
from batchrec.data import formats, sequences
from batchrec.dataset import PreparedDataset


def is_prepared(url: str) -> bool:
    return storage.isdir(url) and storage.exists(storage.join(url, schema.METADATA))


def compute(url: str, fmt: str = "auto", columns: formats.Columns | None = None) -> dict[str, Any]:
    """users, items, interactions, seq_len percentiles, density (+ splits and repeat_targets for
    prepared data)."""
    if is_prepared(url):
        ds = PreparedDataset.open(url)
        repeats = {s: repeat_share(ds, s) for s in ("valid", "test") if len(ds.split_targets(s)[0])}
        return {"kind": "prepared", "source": ds.metadata.get("source"), **ds.metadata["stats"],
                "repeat_targets": repeats}  # fmt: skip
    data = formats.read(url, fmt, columns)
    lengths = data.frame.group_by(schema.USER_COL).len()["len"].to_numpy()
    n_items = data.frame[schema.ITEM_COL].n_unique()
    summary = sequences.summary(len(lengths), n_items, np.bincount(lengths))
    return {"kind": "raw", "format": data.format, **summary}


def repeat_share(ds: PreparedDataset, split: str) -> float:
    """Share of a split's targets whose item is already in the target's input history: the hits
    that `exclude_seen: history` makes impossible (and `none` keeps)."""
    _, offsets, items, _ = ds.flat_sequences()
    rows, positions, targets = ds.split_targets(split)
    user = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    # a target repeats when its (user, item) first occurs before the target itself
    keys, first = np.unique(user * (ds.n_items + 1) + items, return_index=True)
    at = first[np.searchsorted(keys, rows * (ds.n_items + 1) + targets)]
    return float((at < offsets[rows] + positions).mean())


def table(stats: dict[str, Any]) -> str:
    """A human-readable two-column table."""
    rows: list[tuple[str, str]] = []
    for key in ("kind", "format", "source", "users", "items", "interactions", "density"):
        if key in stats and stats[key] is not None:
            v = stats[key]
            rows.append(
                (key, f"{v:,}" if isinstance(v, int) else f"{v:.6f}" if isinstance(v, float) else str(v))
            )
    for key, v in stats.get("seq_len", {}).items():
        rows.append((f"seq_len {key}", f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"))
    for key, v in stats.get("splits", {}).items():
        rows.append((f"split {key}", f"{v:,}"))
    for key, v in stats.get("repeat_targets", {}).items():
        rows.append((f"repeat_targets {key}", f"{v:.4f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>14}" for k, v in rows)
