"""From interaction rows to dense ids, per-user time-ordered sequences and evaluation splits.

All steps are vectorised (polars over rows, numpy over users): no Python loop per event or user.
Ordering rule: a user's events are sorted by timestamp, ties broken by input order (stable).
Splits follow `batchrec.schema`: each user keeps the FULL history with `train_len`; a target at
`position` has history `items[:position]`.
- loo: last event = test, second-last = valid, the rest train. Users with fewer than 3 events
  have nothing to hold out and stay train-only (all events train, no targets).
- time: global timestamp quantiles t_v < t_t; events at or before t_v are train; each later
  event is a target (valid if <= t_t, else test) with its whole preceding history. An event
  with no history (a user's first) is not a target.
- full: everything is train, no targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from batchrec.errors import UserError
from batchrec.schema import ITEM_COL, RATING_COL, TIME_COL, USER_COL

REPEATS = ("keep", "drop-consecutive", "first")
SPLITS = ("loo", "time", "full")
ROW, USER_IDX, ITEM_IDX = "_row", "_user_idx", "_item_idx"


@dataclass
class Sequences:
    """Flat, user-sorted events: user u's events are rows offsets[u]:offsets[u+1]."""

    user_ids: pa.Array  # external id of user u at position u
    item_ids: pa.Array  # external id of item i at position i - 1
    offsets: np.ndarray  # int64 (U + 1,)
    items: np.ndarray  # int32 internal item ids, 1..N
    timestamps: np.ndarray  # int64


@dataclass
class Split:
    train_len: np.ndarray  # int32 (U,)
    targets: pa.Table  # user_idx, split, position, item_idx


def string_safe(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        return arr.cast(pa.string())
    return arr


def filter_rating(
    df: pl.DataFrame, min_rating: float | None, where: str, allow_empty: bool = False
) -> pl.DataFrame:
    """Events rated at least `min_rating`; `allow_empty` for a piece of the input (the Ray
    engine checks the whole)."""
    if min_rating is None:
        return df
    if RATING_COL not in df.columns:
        raise UserError(
            "--min-rating needs a rating column and the input has none",
            where=where,
            fix="drop --min-rating, or name the column with --rating-col",
        )
    out = df.filter(pl.col(RATING_COL) >= min_rating)
    if out.height == 0 and not allow_empty:
        raise all_below_min_rating(min_rating, where)
    return out


def all_below_min_rating(min_rating: float, where: str) -> UserError:
    return UserError(
        f"no interactions left: every rating is below --min-rating {min_rating:g}",
        where=where,
        fix="lower --min-rating",
    )


def order(df: pl.DataFrame) -> pl.DataFrame:
    """Number rows in input order (unless a `_row` column already does), rank users by first
    appearance, sort by (user, time, input order)."""
    if ROW not in df.columns:
        df = df.with_row_index(ROW)
    first_row = pl.col(ROW).min().over(USER_COL)
    return df.with_columns(first_row.rank("dense").alias(USER_IDX)).sort([USER_IDX, TIME_COL, ROW])


def drop_repeats(df: pl.DataFrame, mode: str) -> pl.DataFrame:
    """Repeated (user, item) events on an ordered frame: keep all, drop consecutive repeats, or keep first."""
    if mode == "keep":
        return df
    if mode == "drop-consecutive":
        repeat = (pl.col(USER_IDX) == pl.col(USER_IDX).shift(1)) & (
            pl.col(ITEM_COL) == pl.col(ITEM_COL).shift(1)
        )
        return df.filter(~repeat.fill_null(False))
    if mode == "first":
        return df.unique(subset=[USER_IDX, ITEM_COL], keep="first", maintain_order=True)
    raise UserError(f"unknown repeats mode {mode!r}", fix=f"use one of: {', '.join(REPEATS)}")


def k_core(df: pl.DataFrame, min_user: int, min_item: int, where: str) -> pl.DataFrame:
    """Drop users and items below their thresholds until both hold (0 disables a threshold)."""
    while True:
        before = df.height
        for col, k, flag in (
            (USER_IDX, min_user, "--min-user-count"),
            (ITEM_COL, min_item, "--min-item-count"),
        ):
            if k > 1:
                df = df.filter(pl.len().over(col) >= k)
                if df.height == 0:
                    raise k_core_emptied(flag, k, min_user, min_item, where)
        if df.height == before:
            return df


def k_core_emptied(flag: str, k: int, min_user: int, min_item: int, where: str) -> UserError:
    return UserError(
        f"no interactions left: the {flag} {k} filter (iterated k-core with "
        f"--min-user-count {min_user}, --min-item-count {min_item}) removed them all",
        where=where,
        fix=f"lower {flag} (0 disables it)",
    )


def build(df: pl.DataFrame) -> Sequences:
    """Dense ids (users 0..U-1, items 1..N, both in first-appearance order) and flat sequences.
    A frame that already has `_item_idx` (from a global item table) keeps those item ids."""
    dense_users = (pl.col(USER_IDX).rank("dense") - 1).cast(pl.Int64).alias(USER_IDX)
    if ITEM_IDX in df.columns:
        df = df.with_columns(dense_users)
    else:
        first_seen = pl.col(ROW).min().over(ITEM_COL).rank("dense").cast(pl.Int32).alias(ITEM_IDX)
        df = df.with_columns(dense_users, first_seen)
    users = df.select(USER_IDX, USER_COL).unique(USER_IDX, keep="first").sort(USER_IDX)
    items = df.select(ITEM_IDX, ITEM_COL).unique(ITEM_IDX, keep="first").sort(ITEM_IDX)
    user_idx = df[USER_IDX].to_numpy()
    offsets = np.zeros(users.height + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_idx, minlength=users.height), out=offsets[1:])
    return Sequences(
        user_ids=string_safe(users[USER_COL].to_arrow()),
        item_ids=string_safe(items[ITEM_COL].to_arrow()),
        offsets=offsets,
        items=df[ITEM_IDX].to_numpy().astype(np.int32),
        timestamps=df[TIME_COL].to_numpy().astype(np.int64),
    )


def _targets(users: np.ndarray, positions: np.ndarray, seqs: Sequences, split: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "user_idx": pa.array(users.astype(np.int32)),
            "split": pa.array(split),
            "position": pa.array(positions.astype(np.int32)),
            "item_idx": pa.array(seqs.items[seqs.offsets[users] + positions]),
        }
    )


def time_cuts(timestamps: np.ndarray, valid_quantile: float, test_quantile: float) -> tuple[int, int]:
    """The `time` split's cut points: the 'lower' quantiles of every event's timestamp."""
    t_valid, t_test = np.quantile(timestamps, [valid_quantile, test_quantile], method="lower")
    return int(t_valid), int(t_test)


def split(
    seqs: Sequences,
    how: str,
    valid_quantile: float = 0.8,
    test_quantile: float = 0.9,
    cuts: tuple[int, int] | None = None,
) -> Split:
    """Targets and train lengths; `cuts` (t_valid, t_test) for `time` when the sequences are a
    part of the data (the quantiles are over all of it), else computed here."""
    lengths = np.diff(seqs.offsets)
    empty = np.zeros(0, dtype=np.int64)
    if how == "full":
        return Split(lengths.astype(np.int32), _targets(empty, empty, seqs, np.array([], dtype=object)))
    if how == "loo":
        held = np.flatnonzero(lengths >= 3)
        train_len = np.where(lengths >= 3, lengths - 2, lengths).astype(np.int32)
        # user by user, valid then test: the order every part of the dataset keeps
        users = np.repeat(held, 2)
        positions = np.stack([lengths[held] - 2, lengths[held] - 1], axis=1).ravel()
        names = np.array(["valid", "test"] * len(held), dtype=object)
        return Split(train_len, _targets(users, positions, seqs, names))
    if how == "time":
        t_valid, t_test = cuts or time_cuts(seqs.timestamps, valid_quantile, test_quantile)
        user_of = np.repeat(np.arange(len(lengths)), lengths)
        position = np.arange(len(seqs.items)) - seqs.offsets[user_of]
        after = seqs.timestamps > t_valid
        # Timestamps rise within a user, so the train part is a prefix.
        train_len = np.bincount(user_of[~after], minlength=len(lengths)).astype(np.int32)
        is_target = after & (position > 0)
        names = np.where(seqs.timestamps[is_target] > t_test, "test", "valid").astype(object)
        return Split(train_len, _targets(user_of[is_target], position[is_target], seqs, names))
    raise UserError(f"unknown split {how!r}", fix=f"use one of: {', '.join(SPLITS)}")


def sequence_table(seqs: Sequences, train_len: np.ndarray, first_user: int = 0) -> pa.Table:
    offsets = pa.array(seqs.offsets.astype(np.int32))
    return pa.table(
        {
            "user_idx": pa.array(np.arange(first_user, first_user + len(train_len), dtype=np.int32)),
            "items": pa.ListArray.from_arrays(offsets, pa.array(seqs.items)),
            "timestamps": pa.ListArray.from_arrays(offsets, pa.array(seqs.timestamps)),
            "train_len": pa.array(train_len),
        }
    )


def length_stats(length_counts: np.ndarray) -> dict[str, float]:
    """Sequence-length summary (min, percentiles, max, mean) from `length_counts[n]` = users of
    length n: additive over parts of the data, and exactly `np.percentile` (linear) of the lengths."""
    n = int(length_counts.sum())
    if n == 0:
        return {}
    cum = np.cumsum(length_counts)
    lengths = np.arange(len(length_counts))

    def at(rank: np.ndarray) -> np.ndarray:  # the rank-th smallest length (0-based)
        return np.searchsorted(cum, rank, side="right")

    qs = (5, 25, 50, 75, 90, 95, 99)
    pos = (n - 1) * np.array(qs) / 100
    lo = np.floor(pos).astype(np.int64)
    p = at(lo) + (pos - lo) * (at(np.minimum(lo + 1, n - 1)) - at(lo))
    out: dict[str, float] = {"min": int(at(np.array(0)))}
    out.update({f"p{q}": round(float(v), 2) for q, v in zip(qs, p, strict=True)})
    mean = float((lengths * length_counts).sum() / n)
    out.update(max=int(lengths[length_counts > 0].max()), mean=round(mean, 3))
    return out


def summary(n_users: int, n_items: int, length_counts: np.ndarray) -> dict[str, Any]:
    interactions = int((np.arange(len(length_counts)) * length_counts).sum())
    return {
        "users": n_users,
        "items": n_items,
        "interactions": interactions,
        "seq_len": length_stats(length_counts),
        "density": interactions / max(n_users * n_items, 1),
    }


def split_sizes(train_len: np.ndarray, targets: pa.Table) -> dict[str, int]:
    names = targets.column("split").to_numpy(zero_copy_only=False)
    return {
        "train": int(train_len.sum()),
        "valid": int((names == "valid").sum()),
        "test": int((names == "test").sum()),
    }
