"""The Ray engine of `data prepare`: the local engine's steps, spread over a Ray cluster by user.

    input pieces ─map─▶ events by user partition ─order, dedupe, count─▶ item counts by item bucket
      ─reduce─▶ kept items ─▶ next k-core round … until a round removes nothing
      ─▶ global item table ─finish─▶ one part of the dataset per user partition

Every step is a Ray Data map over small work units (input pieces, user partitions, item buckets)
that exchange data through files in a scratch folder beside the destination (so every node sees
them: an object store, or one filesystem for a local cluster). What reaches the driver is counts,
the item table and cut points, never events or users.

Results equal the local engine's: the same per-user sequences, splits, statistics and item ids
(items numbered by first appearance). Users are numbered partition by partition — partition 0's
users first, each partition's in order of first appearance — instead of globally.

Users are partitioned by a hash of their id that every node and every run agrees on: splitmix64
of the integer id, or of a polynomial hash of the UTF-8 bytes of any other id (not Python's or
polars' hash, which vary by process or build). K-core: users are whole within a partition, so
the user filter is local; item counts are summed per item bucket. A round filters the events to
the previous round's kept items, then users by their count; the rounds stop when one removes
nothing — the same unique maximal k-core the local engine's alternating filters reach.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from batchrec import log, storage
from batchrec.data import formats, sequences
from batchrec.data.sequences import ITEM_IDX, ROW, USER_IDX
from batchrec.dataset import check_destination, publish_prepared, write_part
from batchrec.errors import RetryableError, UserError
from batchrec.schema import ITEM_COL, TIME_COL, USER_COL

_log = log.get("data.prepare")

ROWS_PER_PARTITION = 4_000_000  # `partitions: 0` (auto): one user partition per this many input rows
_SCRATCH_COMPRESSION = "lz4"  # scratch files are written once and read a few times: speed over size
_SELECT_AT_MOST = 1_000_000  # a time cut is picked from at most this many candidate timestamps


def run(cfg, out: str, params: dict[str, Any]) -> str:
    """Prepare `cfg.input` into `out` on Ray (`cfg` is a `PrepareConfig`); returns `out`."""
    import ray

    from batchrec import cluster

    check_destination(out, cfg.force)
    columns = formats.Columns(user=cfg.user_col, item=cfg.item_col, time=cfg.time_col, rating=cfg.rating_col)
    fmt, pieces = formats.pieces(cfg.input, cfg.format)
    if cfg.split == "time" and not formats.has_time(fmt, columns):
        raise UserError(
            f"--split time needs timestamps and the {fmt} format has none",
            where=cfg.input,
            fix="use --split loo or --split full",
        )
    rows = sum(p.rows for p in pieces)
    if rows < 0:  # a text file: its row count is unknown until read; estimate from its size
        rows = storage.size(pieces[0].url) // 40
    n_parts = cfg.partitions or max(1, math.ceil(rows / ROWS_PER_PARTITION))
    ctx = {
        "format": fmt,
        "columns": vars(columns),
        "min_rating": cfg.min_rating,
        "repeats": cfg.repeats,
        "min_user": cfg.min_user_count,
        "min_item": cfg.min_item_count,
        "split": cfg.split,
        "quantiles": [cfg.valid_quantile, cfg.test_quantile],
        "partitions": n_parts,
        "buckets": max(1, math.isqrt(n_parts - 1) + 1),
        "where": cfg.input,
    }
    with cluster.session(cfg.ray_address), storage.staging(out) as stage:
        ctx["stage"], ctx["scratch"] = stage, storage.join(stage, "_scratch")
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        _log.info(
            f"Ray engine: {len(pieces)} input piece(s), {n_parts} user partition(s), "
            f"{ctx['buckets']} item bucket(s), {nodes} node(s)"
        )
        data = _prepare(ctx, pieces)
        storage.remove(ctx["scratch"])
        publish_prepared(out, stage, overwrite=cfg.force, source=cfg.input, params={**params, "format": fmt, "partitions": n_parts},
                         **data)  # fmt: skip
    return out


def _prepare(ctx: dict[str, Any], pieces: list[formats.Piece]) -> dict[str, Any]:
    nodes: set[str] = set()

    def each(
        step: str, fn: Callable[[dict, dict], dict], units: list[dict], ctx: dict[str, Any]
    ) -> list[dict]:
        results = _each(step, fn, units, ctx)
        nodes.update(r["node"] for r in results)
        return results

    mapped = each("read", _read_piece, [{"piece": i, **vars(p)} for i, p in enumerate(pieces)], ctx)
    kinds = {(r["user_type"], r["item_type"]) for r in mapped if r["kept"]}
    if len(kinds) > 1:
        raise UserError(
            f"the input's pieces disagree on the id column types: {sorted(kinds)} (user, item)",
            where=ctx["where"],
            fix="write every file with the same column types",
        )
    if sum(r["rows"] for r in mapped) == 0:
        raise UserError("the input holds no interactions", where=ctx["where"], fix="check the file")
    if sum(r["kept"] for r in mapped) == 0:
        raise sequences.all_below_min_rating(ctx["min_rating"], ctx["where"])
    # what a partition that no piece wrote to reads: no events, of the input's types
    fs, path = storage.url_to_fs(next(r["file"] for r in mapped if r["file"]))
    storage.write_parquet(
        pq.read_schema(path, filesystem=fs).empty_table(), storage.join(ctx["scratch"], "empty.parquet")
    )
    partitions = [{"partition": p} for p in range(ctx["partitions"])]
    buckets = [{"bucket": q} for q in range(ctx["buckets"])]
    previous, rnd = None, 0
    while True:
        counted = each(f"k-core round {rnd + 1}", _count_partition, partitions, {**ctx, "round": rnd})
        events = sum(r["events"] for r in counted)
        if events == 0:
            raise sequences.k_core_emptied(
                "--min-user-count", ctx["min_user"], ctx["min_user"], ctx["min_item"], ctx["where"]
            )
        kept = each(f"item counts {rnd + 1}", _reduce_bucket, buckets, {**ctx, "round": rnd})
        if sum(r["items"] for r in kept) == 0:
            raise sequences.k_core_emptied(
                "--min-item-count", ctx["min_item"], ctx["min_user"], ctx["min_item"], ctx["where"]
            )
        _log.info(f"k-core round {rnd + 1}: {events:,} events, {sum(r['items'] for r in kept):,} items kept")
        if ctx["min_item"] <= 1 or events == previous:
            break
        previous, rnd = events, rnd + 1
    # the global item table: the last round's items, numbered by first appearance
    items = storage.read_parquet(_files(storage.join(ctx["scratch"], f"keep/r{rnd:03d}")))
    items = pl.from_arrow(items).sort("first_row").select(ITEM_COL)
    items = items.with_columns(pl.int_range(1, items.height + 1, dtype=pl.Int32).alias(ITEM_IDX))
    storage.write_parquet(items.to_arrow(), storage.join(ctx["scratch"], "items.parquet"))
    users = [r["users"] for r in sorted(counted, key=lambda r: r["partition"])]
    first = np.concatenate([[0], np.cumsum(users)[:-1]]).astype(int).tolist()
    if ctx["split"] == "time":
        ctx["cuts"] = _time_cuts(ctx, partitions, events)
    units = [{"partition": p, "first_user": first[p]} for p in range(ctx["partitions"])]
    parts = sorted(
        each("write", _finish_partition, units, {**ctx, "round": rnd}), key=lambda r: r["partition"]
    )
    length_counts = np.zeros(max(len(r["length_counts"]) for r in parts), dtype=np.int64)
    for r in parts:
        length_counts[: len(r["length_counts"])] += np.asarray(r["length_counts"], dtype=np.int64)
    stats = sequences.summary(int(sum(users)), items.height, length_counts)
    stats["splits"] = {s: sum(r["splits"][s] for r in parts) for s in ("train", "valid", "test")}
    if stats["splits"]["valid"] == 0 and stats["splits"]["test"] == 0 and ctx["split"] != "full":
        _log.warning(f"the {ctx['split']} split produced no evaluation targets")
    item_ids = items.get_column(ITEM_COL).to_arrow()
    _log.info(f"{len(nodes)} node(s) did the work")
    return {
        "item_ids": sequences.string_safe(item_ids),
        "parts": [r["part"] for r in parts],
        "stats": stats,
    }


# ---- the work units (run in Ray workers) ---------------------------------------------------------


def _read_piece(unit: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Read one input piece, keep rated-enough events, write them by user partition."""
    rows = {k: unit[k] for k in ("url", "first_row", "rows")}
    piece = formats.Piece(**rows, row_groups=tuple(unit["row_groups"]) if unit["row_groups"] else None)
    frame = formats.read_piece(piece, ctx["format"], formats.Columns(**ctx["columns"])).frame
    n = frame.height
    frame = frame.with_columns(pl.int_range(piece.first_row, piece.first_row + n, dtype=pl.Int64).alias(ROW))
    frame = sequences.filter_rating(frame, ctx["min_rating"], piece.url, allow_empty=True)
    frame = frame.select(USER_COL, ITEM_COL, TIME_COL, ROW)
    part = pl.Series("_part", partition_of(frame.get_column(USER_COL), ctx["partitions"]))
    written = None
    for (p,), sub in frame.with_columns(part).partition_by("_part", as_dict=True).items():
        written = storage.join(ctx["scratch"], f"events/p={p:05d}/piece-{unit['piece']:05d}.parquet")
        storage.write_parquet(sub.drop("_part").to_arrow(), written, compression=_SCRATCH_COMPRESSION)
    return {
        "rows": n,
        "kept": frame.height,
        "user_type": str(frame.schema[USER_COL]),
        "item_type": str(frame.schema[ITEM_COL]),
        "file": written,
    }


def _count_partition(unit: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """One k-core round of a user partition: its surviving events' item counts, by item bucket.
    Round 1 first orders the partition and drops repeats (kept for the next rounds)."""
    p, rnd = unit["partition"], ctx["round"]
    ordered = storage.join(ctx["scratch"], f"ordered/part-{p:05d}.parquet")
    if rnd == 0:
        events_dir = storage.join(ctx["scratch"], f"events/p={p:05d}")
        files = _files(events_dir) or [storage.join(ctx["scratch"], "empty.parquet")]
        df = sequences.drop_repeats(
            sequences.order(pl.from_arrow(storage.read_parquet(files))), ctx["repeats"]
        )
        df = df.select(USER_COL, ITEM_COL, TIME_COL, ROW, USER_IDX)
        storage.write_parquet(df.to_arrow(), ordered, compression=_SCRATCH_COMPRESSION)
        keep = None
    else:
        df = pl.from_arrow(storage.read_parquet(ordered))
        keep = pl.from_arrow(
            storage.read_parquet(_files(storage.join(ctx["scratch"], f"keep/r{rnd - 1:03d}")))
        )
    df = _survivors(df, keep, ctx["min_user"])
    counts = df.group_by(ITEM_COL).agg(pl.len().alias("count"), pl.col(ROW).min().alias("first_row"))
    bucket = pl.Series("_bucket", partition_of(counts.get_column(ITEM_COL), ctx["buckets"]))
    for (q,), sub in counts.with_columns(bucket).partition_by("_bucket", as_dict=True).items():
        url = storage.join(ctx["scratch"], f"counts/r{rnd:03d}/q={q:05d}/part-{p:05d}.parquet")
        storage.write_parquet(sub.drop("_bucket").to_arrow(), url, compression=_SCRATCH_COMPRESSION)
    return {"partition": p, "events": df.height, "users": df.get_column(USER_IDX).n_unique()}


def _reduce_bucket(unit: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Sum one item bucket's counts over the partitions and keep the items that pass."""
    q, rnd = unit["bucket"], ctx["round"]
    files = _files(storage.join(ctx["scratch"], f"counts/r{rnd:03d}/q={q:05d}"))
    url = storage.join(ctx["scratch"], f"keep/r{rnd:03d}/part-{q:05d}.parquet")
    if not files:
        return {"items": 0}
    counts = pl.from_arrow(storage.read_parquet(files))
    kept = counts.group_by(ITEM_COL).agg(pl.col("count").sum(), pl.col("first_row").min())
    if ctx["min_item"] > 1:
        kept = kept.filter(pl.col("count") >= ctx["min_item"])
    storage.write_parquet(kept.to_arrow(), url, compression=_SCRATCH_COMPRESSION)
    return {"items": kept.height}


def _final_events(p: int, ctx: dict[str, Any]) -> pl.DataFrame:
    """A partition's events that survive k-core, with their global item ids."""
    df = pl.from_arrow(storage.read_parquet(storage.join(ctx["scratch"], f"ordered/part-{p:05d}.parquet")))
    items = pl.from_arrow(storage.read_parquet(storage.join(ctx["scratch"], "items.parquet")))
    df = df.join(items, on=ITEM_COL, how="inner", maintain_order="left")
    return _survivors(df, None, ctx["min_user"])


def _finish_partition(unit: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Sequences, splits and the dataset's part for one user partition."""
    p, first = unit["partition"], unit["first_user"]
    seqs = sequences.build(_final_events(p, ctx))
    cuts = tuple(ctx["cuts"]) if ctx.get("cuts") else None
    sp = sequences.split(seqs, ctx["split"], *ctx["quantiles"], cuts=cuts)
    targets = sp.targets.set_column(
        0, "user_idx", pa.array(sp.targets.column("user_idx").to_numpy() + first, type=pa.int32())
    )
    part = write_part(
        ctx["stage"],
        p,
        user_ids=seqs.user_ids,
        first_user=first,
        sequences=sequences.sequence_table(seqs, sp.train_len, first_user=first),
        targets=targets,
    )
    return {
        "partition": p,
        "part": part,
        "length_counts": np.bincount(np.diff(seqs.offsets)).tolist(),
        "splits": sequences.split_sizes(sp.train_len, sp.targets),
    }


def _timestamp_stats(unit: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """For the time split's cut points: write a partition's final timestamps; then answer the
    driver's questions about them (counts per bin of a range, or the values in a range)."""
    p = unit["partition"]
    url = storage.join(ctx["scratch"], f"timestamps/part-{p:05d}.parquet")
    if "ask" not in ctx:
        ts = _final_events(p, ctx).get_column(TIME_COL)
        storage.write_parquet(pa.table({"t": ts.to_arrow()}), url, compression=_SCRATCH_COMPRESSION)
        return {"n": len(ts), "min": ts.min(), "max": ts.max()}
    ts = storage.read_parquet(url).column("t").to_numpy()
    answers = []
    for lo, hi, width in ctx["ask"]:
        inside = ts[(ts >= lo) & (ts <= hi)]
        if width:
            answers.append(
                {"below": int((ts < lo).sum()), "bins": np.bincount((inside - lo) // width).tolist()}
            )
        else:
            answers.append({"values": np.sort(inside).tolist()})
    return {"answers": answers}


# ---- driver-side helpers ---------------------------------------------------------------------------


def _survivors(df: pl.DataFrame, keep: pl.DataFrame | None, min_user: int) -> pl.DataFrame:
    if keep is not None:
        df = df.filter(pl.col(ITEM_COL).is_in(keep.get_column(ITEM_COL).implode()))
    if min_user > 1:
        df = df.filter(pl.len().over(USER_IDX) >= min_user)
    return df


def _time_cuts(ctx: dict[str, Any], partitions: list[dict], n: int) -> list[int]:
    """The exact 'lower' quantiles of every surviving event's timestamp (as `sequences.time_cuts`
    computes them on one machine): each cut's range is narrowed with histograms from the
    partitions until it holds at most `_SELECT_AT_MOST` events, which are then fetched."""
    first = _each("time split", _timestamp_stats, partitions, ctx)
    lo = min(r["min"] for r in first if r["n"])
    hi = max(r["max"] for r in first if r["n"])
    # numpy's 'lower' method takes the floor of the virtual index n*q + (1 - q) - 1
    ranks = [min(n - 1, max(0, math.floor(n * q + (1 + q * (1 - 1 - 1)) - 1))) for q in ctx["quantiles"]]
    cuts: list[int | None] = [None] * len(ranks)
    ranges = [(lo, hi, 0, n) for _ in ranks]  # per cut: its range, the events below it and in it
    while any(c is None for c in cuts):
        ask = []
        for cut, (lo_, hi_, _, inside) in zip(cuts, ranges, strict=True):
            width = 0 if inside <= _SELECT_AT_MOST else -(-(hi_ - lo_ + 1) // 65536)
            ask.append([lo_, hi_, width] if cut is None else [0, -1, 0])
        answers = [
            r["answers"] for r in _each("time split", _timestamp_stats, partitions, {**ctx, "ask": ask})
        ]
        for i, (rank, (lo_, hi_, width)) in enumerate(zip(ranks, ask, strict=True)):
            if cuts[i] is not None:
                continue
            below = ranges[i][2]
            if not width:
                values = np.sort(
                    np.concatenate([np.asarray(a[i]["values"], dtype=np.int64) for a in answers])
                )
                cuts[i] = int(values[rank - below])
                continue
            hist = np.zeros(65536, dtype=np.int64)
            for a in answers:
                hist[: len(a[i]["bins"])] += a[i]["bins"]
            b = int(np.searchsorted(below + np.cumsum(hist), rank, side="right"))
            new_lo = lo_ + b * width
            ranges[i] = (new_lo, min(hi_, new_lo + width - 1), below + int(hist[:b].sum()), int(hist[b]))
    return [int(c) for c in cuts]


def partition_of(ids: pl.Series, n: int) -> np.ndarray:
    """Partition 0..n-1 of each id: the same on every machine, in every process, for the same
    id value (an integer's width does not matter)."""
    if ids.dtype.is_integer():
        keys = ids.cast(pl.Int64).to_numpy().view(np.uint64)
    else:
        arr = ids.cast(pl.String).to_arrow()
        step = 1 << 20
        keys = np.concatenate([_bytes_hash(arr.slice(i, step)) for i in range(0, len(arr), step)] or [[]])
    return (_splitmix64(keys.astype(np.uint64)) % np.uint64(n)).astype(np.int64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _bytes_hash(arr: pa.Array) -> np.ndarray:
    """sum(byte_j * B^(len-1-j)) mod 2^64 of each string's UTF-8 bytes, plus its length, vectorised."""
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    base = np.uint64(0x100000001B3)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, base, dtype=np.uint64))  # B^1, B^2…
    powers = np.concatenate([np.ones(1, np.uint64), powers[:-1]])  # B^0, B^1… (mod 2^64)
    end_of_byte = np.repeat(offsets[1:], lengths)
    exponent = end_of_byte - 1 - np.arange(offsets[0], offsets[-1])
    terms = data[offsets[0] : offsets[-1]].astype(np.uint64) * powers[exponent]
    running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
    rel = offsets - offsets[0]
    return (running[rel[1:]] - running[rel[:-1]]) ^ (lengths.astype(np.uint64) << np.uint64(56))


def _files(folder: str) -> list[str]:
    """The Parquet files directly in `folder`, sorted; none when it does not exist."""
    if not storage.exists(folder):
        return []
    return [storage.join(folder, name) for name in sorted(storage.ls(folder)) if name.endswith(".parquet")]


def _each(step: str, fn: Callable[[dict, dict], dict], units: list[dict], ctx: dict[str, Any]) -> list[dict]:
    """`fn(unit, ctx)` for every unit, one Ray Data task each (one CPU), results in any order.
    A `UserError` raised in a worker reaches the caller as itself; a step in which no unit
    finishes for too long (`cluster.Watchdog`) is stopped and raised as a `RetryableError`."""
    import ray

    from batchrec import cluster

    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False
    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(
        _apply, fn_kwargs={"fn": fn, "ctx": json.dumps(ctx)}, batch_size=1, num_cpus=1, zero_copy_batch=True
    )
    results: list[dict] = []
    with cluster.Watchdog(None).watching() as watchdog, log.Progress(len(units), f"prepare: {step}") as bar:

        def consume() -> None:
            for row in ds.iter_rows():
                results.append(json.loads(row["result"]))
                watchdog.batch_done()
                bar.update(1)

        watchdog.drive(consume, "batchrec-prepare")
        if watchdog.stalled:
            raise RetryableError(
                f"data prepare stalled in step {step!r}: {watchdog.stalled}; nothing was published — "
                "rerun the same command"
            )
    refused = [r["refused"] for r in results if "refused" in r]
    if refused:
        raise UserError(**refused[0])
    return results


def _apply(batch: dict[str, np.ndarray], fn: Callable, ctx: str) -> dict[str, np.ndarray]:
    """Run `fn` on the batch's unit. The input's fault (a `UserError`) comes back as a result, so
    the driver raises it as one line and Ray neither retries nor logs it as a crash."""
    import ray

    out = []
    for unit in batch["unit"]:
        try:
            result = fn(json.loads(unit), json.loads(ctx))
        except UserError as e:
            result = {"refused": {"what": e.what, "where": e.where, "fix": e.fix}}
        result["node"] = ray.get_runtime_context().get_node_id()
        out.append(json.dumps(result, default=_plain))
    return {"result": np.array(out, dtype=object)}


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__}")
