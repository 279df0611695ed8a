"""Statistics of a raw interaction log (any readable format) or of a prepared dataset."""

from __future__ import annotations

from typing import Any

from batchrec import schema, storage
from batchrec.data import formats, sequences
from batchrec.dataset import PreparedDataset


def is_prepared(url: str) -> bool:
    return storage.isdir(url) and storage.exists(storage.join(url, schema.METADATA))


def compute(url: str, fmt: str = "auto", columns: formats.Columns | None = None) -> dict[str, Any]:
    """users, items, interactions, seq_len percentiles, density (+ splits for prepared data)."""
    if is_prepared(url):
        ds = PreparedDataset.open(url)
        return {"kind": "prepared", "source": ds.metadata.get("source"), **ds.metadata["stats"]}
    data = formats.read(url, fmt, columns)
    lengths = data.frame.group_by(schema.USER_COL).len()["len"].to_numpy()
    n_items = data.frame[schema.ITEM_COL].n_unique()
    return {"kind": "raw", "format": data.format, **sequences.summary(len(lengths), n_items, lengths)}


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
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>14}" for k, v in rows)
