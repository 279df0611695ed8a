"""Read and write the prepared-dataset artifact (layout in `batchrec.schema`).

Every stage after ingest reads its data through `PreparedDataset`; ingest writes it through
`write_prepared`, which publishes all files at once or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from batchrec import __version__, schema, storage
from batchrec.errors import UserError
from batchrec.ids import IdMap


@dataclass
class PreparedDataset:
    url: str
    metadata: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, url: str) -> PreparedDataset:
        meta_url = storage.join(url, schema.METADATA)
        if not storage.is_published(url, schema.METADATA):
            raise UserError(
                "no prepared dataset here",
                where=url,
                fix="run `batchrec data prepare INPUT --out URL` first, or pass --data with its URL",
            )
        meta = storage.read_json(meta_url)
        version = meta.get("format_version")
        if version != schema.PREPARED_FORMAT_VERSION:
            raise UserError(
                f"prepared dataset has format version {version}, this batchrec reads {schema.PREPARED_FORMAT_VERSION}",
                where=url,
                fix="prepare the data again with this batchrec version",
            )
        return cls(url=url, metadata=meta)

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    @property
    def n_items(self) -> int:
        """Number of real items N; internal item ids are 1..N."""
        return int(self.metadata["stats"]["items"])

    @property
    def n_users(self) -> int:
        return int(self.metadata["stats"]["users"])

    def reference(self) -> dict[str, Any]:
        """What a checkpoint records of the data it was trained on (see `checkpoint.vocabulary`)."""
        return {
            "url": self.url,
            "fingerprint": self.fingerprint,
            "item_map_fingerprint": self.metadata["item_map_fingerprint"],
            "n_items": self.n_items,
        }

    @cached_property
    def item_map(self) -> IdMap:
        t = storage.read_parquet(storage.join(self.url, schema.ITEM_MAP))
        return IdMap(t.column("item_id").combine_chunks(), offset=1)

    @cached_property
    def user_map(self) -> IdMap:
        t = storage.read_parquet(storage.join(self.url, schema.USER_MAP))
        return IdMap(t.column("user_id").combine_chunks(), offset=0)

    @cached_property
    def sequences(self) -> pa.Table:
        return storage.read_parquet(storage.join(self.url, schema.SEQUENCES))

    @cached_property
    def targets(self) -> pa.Table:
        return storage.read_parquet(storage.join(self.url, schema.TARGETS))

    def flat_sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user_idx, offsets, items, train_len): user i's history is items[offsets[i]:offsets[i+1]]."""
        return flatten(self.sequences)

    def train_items(self) -> np.ndarray:
        """Every user's training events items[:train_len], flat: all a baseline may be fit on
        (under a time split the events after the cut are targets, not training data)."""
        _, offsets, items, train_len = self.flat_sequences()
        lengths = np.diff(offsets)
        position = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)
        return items[position < np.repeat(train_len, lengths)]

    def split_targets(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, position, item_idx) of a split's targets; `row` indexes `flat_sequences()`."""
        if split not in schema.SPLITS:
            raise UserError(f"unknown split {split!r}", fix=f"use one of {', '.join(schema.SPLITS)}")
        t = self.targets
        mask = np.asarray(t.column("split").to_numpy(zero_copy_only=False) == split)
        users = t.column("user_idx").to_numpy()[mask].astype(np.int64)
        seq_users = self.sequences.column("user_idx").to_numpy().astype(np.int64)
        row_of = np.full(int(seq_users.max(initial=-1)) + 1, -1, dtype=np.int64)
        row_of[seq_users] = np.arange(len(seq_users))
        return (
            row_of[users],
            t.column("position").to_numpy()[mask].astype(np.int64),
            t.column("item_idx").to_numpy()[mask].astype(np.int64),
        )


def flatten(seqs: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user_idx, offsets, items, train_len) of sequence rows (all of them, or one worker's share):
    row i's history is items[offsets[i]:offsets[i+1]]."""
    col = seqs.column("items").combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    items = col.values.to_numpy().astype(np.int64)
    if col.offset or offsets[0]:
        items = items[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
    return (
        seqs.column("user_idx").to_numpy().astype(np.int64),
        offsets,
        items,
        seqs.column("train_len").to_numpy().astype(np.int64),
    )


def fingerprint_tables(*tables: pa.Table) -> str:
    """A content hash of Arrow tables (IPC bytes of each, chunking normalised)."""
    import hashlib

    h = hashlib.sha256()
    for t in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t.combine_chunks())
        h.update(memoryview(sink.getvalue()))
    return h.hexdigest()[:16]


def write_prepared(
    url: str,
    *,
    item_ids: pa.Array,
    user_ids: pa.Array,
    sequences: pa.Table,
    targets: pa.Table,
    source: str,
    params: dict[str, Any],
    stats: dict[str, Any],
    overwrite: bool = False,
) -> str:
    """Publish a prepared dataset at `url`. Refuses to replace a different dataset unless `overwrite`."""
    sequences = sequences.cast(schema.SEQUENCES_SCHEMA)
    targets = targets.cast(schema.TARGETS_SCHEMA)
    item_table = pa.table(
        {"item_idx": pa.array(np.arange(1, len(item_ids) + 1, dtype=np.int32)), "item_id": item_ids}
    )
    user_table = pa.table(
        {"user_idx": pa.array(np.arange(len(user_ids), dtype=np.int32)), "user_id": user_ids}
    )
    fp = fingerprint_tables(item_table, user_table, sequences, targets)
    meta_url = storage.join(url, schema.METADATA)
    if storage.exists(url) and storage.ls(url):
        existing = storage.read_json(meta_url).get("fingerprint") if storage.exists(meta_url) else None
        if existing == fp and storage.is_published(url):
            return url
        if not overwrite:
            raise UserError(
                "the destination already holds a different dataset"
                if existing
                else "the destination is not empty",
                where=url,
                fix="choose another --out, or pass --force to replace it",
            )
    metadata = {
        "format_version": schema.PREPARED_FORMAT_VERSION,
        "batchrec_version": __version__,
        "created_at": schema.created_at(),
        "source": source,
        "params": params,
        "stats": stats,
        "item_map_fingerprint": IdMap(item_ids, offset=1).fingerprint(),
        "fingerprint": fp,
    }
    with storage.staged_dir(url) as stage:
        storage.write_parquet(item_table, storage.join(stage, schema.ITEM_MAP))
        storage.write_parquet(user_table, storage.join(stage, schema.USER_MAP))
        storage.write_parquet(sequences, storage.join(stage, schema.SEQUENCES), row_group_size=256_000)
        storage.write_parquet(targets, storage.join(stage, schema.TARGETS))
        storage.write_json(storage.join(stage, schema.METADATA), metadata)
    return url
