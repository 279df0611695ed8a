"""Scoring output tables: internal ids in, external ids (original Arrow type) out (layout in schema).

The scorer keeps dense internal ids end to end; only here do they become the user's and item's
external ids. Each scored batch becomes one Parquet part per table, named after the batch's first
user, so a batch that Ray retries rewrites the same files instead of adding duplicates.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchrec import __version__, schema, storage, workspace
from batchrec.ids import IdMap

LAYOUTS = ("lists", "exploded")
# Dictionary-encode only the one low-cardinality column: ids and scores are (nearly) all distinct
# within a part, so a dictionary first fills up and is then abandoned, which took half the
# writing time and gave larger files (BENCHMARKS.md, issue 17).
_DICTIONARY_COLUMNS = ("source",)


def write_table(table: pa.Table, url: str) -> None:
    """Write one part of an output table."""
    storage.write_parquet(
        table, url, use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in table.column_names]
    )


def _embeddings(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def part_name(first_user_idx: int) -> str:
    return f"part-{int(first_user_idx):010d}.parquet"


def user_embeddings_table(user_idx: np.ndarray, vectors: np.ndarray, user_map: IdMap) -> pa.Table:
    return pa.Table.from_arrays(
        [user_map.to_external(user_idx), _embeddings(vectors)],
        schema=schema.user_embeddings_schema(user_map.type, vectors.shape[1]),
    )


def item_embeddings_table(vectors: np.ndarray, item_map: IdMap) -> pa.Table:
    """`vectors` is the model's (N + 1, d) item table; row 0 (padding) is not exported."""
    return pa.Table.from_arrays(
        [item_map.to_external(np.arange(1, len(vectors))), _embeddings(vectors[1:])],
        schema=schema.item_embeddings_schema(item_map.type, vectors.shape[1]),
    )


def topk_table(
    user_idx: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    user_map: IdMap,
    item_map: IdMap,
    layout: str = "lists",
    source: str = "model",
) -> pa.Table:
    """(B, k) internal item ids and scores in rank order → the top-k table.

    Entries scored -inf are masked (a user who has seen almost the whole catalogue has fewer
    than k candidates); they are dropped, so such a user's list is shorter than k. A NaN score
    is written as null: the fallback lists have no model score.
    """
    valid = ~np.isneginf(scores)
    counts = valid.sum(axis=1)
    flat_items = item_map.to_external(items[valid])
    kept = scores[valid].astype(np.float32)
    flat_scores = pa.array(kept, mask=np.isnan(kept))
    users = user_map.to_external(user_idx)
    sources = pa.array([source] * len(user_idx), pa.string())
    if layout == "exploded":
        rows = np.repeat(np.arange(len(user_idx)), counts)
        ranks = np.concatenate([np.arange(c, dtype=np.int32) for c in counts]) if len(counts) else []
        return pa.Table.from_arrays(
            [
                users.take(pa.array(rows)),
                pa.array(ranks, pa.int32()),
                flat_items,
                flat_scores,
                sources.take(pa.array(rows)),
            ],
            schema=schema.topk_exploded_schema(user_map.type, item_map.type),
        )
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.Table.from_arrays(
        [
            users,
            pa.ListArray.from_arrays(offsets, flat_items),
            pa.ListArray.from_arrays(offsets, flat_scores),
            sources,
        ],
        schema=schema.topk_schema(user_map.type, item_map.type),
    )


def write_fallback_part(
    run_url: str, user_idx: np.ndarray, popular: np.ndarray, user_map: IdMap, item_map: IdMap, layout: str
) -> int:
    """The top-k rows of users the model cannot score: everyone gets `popular` (internal ids, most
    popular first), `source` "fallback", no score. One part, named after its first user."""
    if not len(user_idx):
        return 0
    user_idx = np.sort(user_idx)
    items = np.tile(popular, (len(user_idx), 1))
    scores = np.full(items.shape, np.nan, dtype=np.float32)
    table = topk_table(user_idx, items, scores, user_map, item_map, layout, source="fallback")
    write_table(table, storage.join(run_url, schema.TOPK, part_name(int(user_idx[0]))))
    return len(user_idx)


def write_part(
    run_url: str,
    scored: dict[str, np.ndarray],
    user_map: IdMap,
    item_map: IdMap,
    layout: str = "lists",
) -> int:
    """Write one scored batch (Scorer output) as a part of user_embeddings/ and topk/; returns its users."""
    user_idx = scored["user_idx"]
    if not len(user_idx):
        return 0
    name = part_name(user_idx.min())
    write_table(
        user_embeddings_table(user_idx, scored["embedding"], user_map),
        storage.join(run_url, schema.USER_EMBEDDINGS, name),
    )
    write_table(
        topk_table(user_idx, scored["topk_items"], scored["topk_scores"], user_map, item_map, layout),
        storage.join(run_url, schema.TOPK, name),
    )
    return len(user_idx)


def publish_run(staging: str, run_url: str, *, success_marker: bool = True) -> None:
    """Publish a staged scoring run: `staging` holds {table}/part-*.parquet and manifest.json.

    Each table's directory becomes the date's partition {out}/{table}/dt=D, replacing that
    partition only (other dates stay); the run record {out}/_runs/dt=D gets the manifest and,
    last, `_SUCCESS`. The record's old `_SUCCESS` goes first, so while partitions are being
    swapped the date reads as incomplete — never as a mix of two runs that claims to be whole.
    A date's old FAISS index is removed with its item embeddings."""
    storage.remove(storage.join(run_url, storage.SUCCESS))
    for table in schema.TABLES:
        storage.publish(storage.join(staging, table), workspace.table_url(run_url, table))
    # an index of the date's old item embeddings would no longer match them
    storage.remove(workspace.index_dir(run_url))
    storage.publish(staging, run_url, success_marker=success_marker)


def count_rows(dir_url: str) -> int:
    """Rows in a directory of Parquet parts, from the footers only."""
    fs, path = storage.url_to_fs(dir_url)
    if not fs.exists(path):
        return 0
    total = 0
    for p in sorted(fs.ls(path, detail=False)):
        if posixpath.basename(p).endswith(".parquet"):
            with fs.open(p, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
    return total


def manifest(**fields: Any) -> dict[str, Any]:
    """The manifest in `schema.MANIFEST_KEYS` order; every key must be given."""
    fields.setdefault("schema_version", schema.SCHEMA_VERSION)
    fields.setdefault("batchrec_version", __version__)
    missing = [k for k in schema.MANIFEST_KEYS if k not in fields]
    if missing:
        raise ValueError(f"manifest is missing {missing}")
    extra = {k: v for k, v in fields.items() if k not in schema.MANIFEST_KEYS}
    return {**{k: fields[k] for k in schema.MANIFEST_KEYS}, **extra}
