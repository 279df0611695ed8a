"""Read and write the prepared-dataset artifact (layout in `batchrec.schema`).

Every stage after ingest reads its data through `PreparedDataset`; ingest writes it through
`write_prepared`, which publishes all files at once or nothing.
"""

from __future__ import annotations

import hashlib
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
        if version not in schema.PREPARED_FORMAT_VERSIONS:
            raise UserError(
                f"prepared dataset has format version {version}, this batchrec reads "
                f"{', '.join(map(str, schema.PREPARED_FORMAT_VERSIONS))}",
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

    def part_urls(self, table: str) -> list[str]:
        """The Parquet files of `table` (`sequences`, `targets` or `user_map`), in user order.

        A sharded dataset lists its parts in metadata.json; one written before sharding (format
        version 1) has a single file per table."""
        parts = self.metadata.get("parts")
        if parts is None:
            return [storage.join(self.url, schema.SINGLE_FILES[table])]
        return [storage.join(self.url, rel) for rel in parts[table]]

    @cached_property
    def user_map(self) -> IdMap:
        t = storage.read_parquet(self.part_urls("user_map"))
        return IdMap(t.column("user_id").combine_chunks(), offset=0)

    @cached_property
    def sequences(self) -> pa.Table:
        return storage.read_parquet(self.part_urls("sequences"))

    @cached_property
    def targets(self) -> pa.Table:
        return storage.read_parquet(self.part_urls("targets"))

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


def part_digest(table: pa.Table) -> str:
    """A content hash of one Arrow table (IPC bytes, chunking normalised)."""
    h = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.combine_chunks())
    h.update(memoryview(sink.getvalue()))
    return h.hexdigest()


def combine_digests(digests: list[str]) -> str:
    """The dataset fingerprint: a hash of its tables' digests in a fixed order (item map, then
    each part's user map, sequences and targets), so workers hash their own parts."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def item_map_table(item_ids: pa.Array) -> pa.Table:
    return pa.table(
        {"item_idx": pa.array(np.arange(1, len(item_ids) + 1, dtype=np.int32)), "item_id": item_ids}
    )


def write_part(
    stage: str, index: int, *, user_ids: pa.Array, first_user: int, sequences: pa.Table, targets: pa.Table
) -> dict[str, Any]:
    """Write part `index` (users first_user.. of the dataset) of every per-user table under
    `stage`; returns its files and digests for `publish_prepared`."""
    user_table = pa.table(
        {
            "user_idx": pa.array(np.arange(first_user, first_user + len(user_ids), dtype=np.int32)),
            "user_id": user_ids,
        }
    )
    tables = {
        "user_map": user_table,
        "sequences": sequences.cast(schema.SEQUENCES_SCHEMA),
        "targets": targets.cast(schema.TARGETS_SCHEMA),
    }
    files = {}
    for name, table in tables.items():
        files[name] = f"{name}/part-{index:05d}.parquet"
        storage.write_parquet(table, storage.join(stage, files[name]), row_group_size=256_000)
    return {
        "files": files,
        "digests": [part_digest(tables[name]) for name in schema.PART_TABLES],
        "users": len(user_ids),
    }


def existing_fingerprint(url: str) -> str | None:
    meta_url = storage.join(url, schema.METADATA)
    return storage.read_json(meta_url).get("fingerprint") if storage.exists(meta_url) else None


def check_destination(url: str, overwrite: bool, fingerprint: str | None = None) -> bool:
    """True when `url` already holds the published dataset `fingerprint` (nothing to publish).
    Refuses a destination holding anything else unless `overwrite`; before the new dataset's
    fingerprint is known (None), only one holding something other than a prepared dataset."""
    if not (storage.exists(url) and storage.ls(url)):
        return False
    existing = existing_fingerprint(url)
    if fingerprint is not None and existing == fingerprint and storage.is_published(url):
        return True
    if overwrite or (fingerprint is None and existing):
        return False
    raise UserError(
        "the destination already holds a different dataset" if existing else "the destination is not empty",
        where=url,
        fix="choose another --out, or pass --force to replace it",
    )


def publish_prepared(
    url: str,
    stage: str,
    *,
    item_ids: pa.Array,
    parts: list[dict[str, Any]],
    source: str,
    params: dict[str, Any],
    stats: dict[str, Any],
    overwrite: bool = False,
) -> None:
    """Finish the dataset whose parts are written under `stage` (item map + metadata.json) and
    publish it at `url` — unless `url` already holds this very dataset, then `stage` is dropped.
    Refuses to replace a different one unless `overwrite`."""
    item_table = item_map_table(item_ids)
    item_digest = part_digest(item_table)
    fp = combine_digests([item_digest] + [d for part in parts for d in part["digests"]])
    if check_destination(url, overwrite, fp):
        storage.remove(stage)
        return
    storage.write_parquet(item_table, storage.join(stage, schema.ITEM_MAP))
    storage.write_json(
        storage.join(stage, schema.METADATA),
        {
            "format_version": schema.PREPARED_FORMAT_VERSION,
            "batchrec_version": __version__,
            "created_at": schema.created_at(),
            "source": source,
            "params": params,
            "stats": stats,
            "item_map_fingerprint": IdMap(item_ids, offset=1).fingerprint(),
            "fingerprint": fp,
            "parts": {name: [p["files"][name] for p in parts] for name in schema.PART_TABLES},
        },
    )
    storage.publish(stage, url)


def part_bounds(lengths: np.ndarray, max_events: int | None = None) -> list[tuple[int, int]]:
    """User ranges [a, b) of consecutive parts holding at most `max_events` (default
    `schema.PART_EVENTS`) events each; a user longer than that gets a part of its own."""
    max_events = max_events or schema.PART_EVENTS
    ends = np.cumsum(lengths, dtype=np.int64)
    bounds, start = [], 0
    while start < len(lengths):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + max_events, side="right")), start + 1)
        bounds.append((start, stop))
        start = stop
    return bounds or [(0, 0)]


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
    """Publish a prepared dataset held in memory at `url`, cut into parts of at most
    `schema.PART_EVENTS` events. Refuses to replace a different dataset unless `overwrite`."""
    check_destination(url, overwrite)
    lengths = np.diff(sequences.column("items").combine_chunks().offsets.to_numpy())
    target_user = targets.column("user_idx").to_numpy()
    order = np.argsort(target_user, kind="stable")
    with storage.staging(url) as stage:
        parts = []
        for index, (a, b) in enumerate(part_bounds(lengths)):
            lo, hi = np.searchsorted(target_user[order], [a, b])
            parts.append(
                write_part(
                    stage,
                    index,
                    user_ids=user_ids.slice(a, b - a),
                    first_user=a,
                    sequences=sequences.slice(a, b - a),
                    targets=targets.take(pa.array(order[lo:hi])),
                )
            )
        publish_prepared(
            url, stage, item_ids=item_ids, parts=parts, source=source, params=params, stats=stats,
            overwrite=overwrite,
        )  # fmt: skip
    return url
